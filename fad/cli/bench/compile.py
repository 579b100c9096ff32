"""SOLVER.COMPILE on the CPU: one FCOS training step, torch.compile'd vs eager.

Two copies of the detector of `--config-file` (same seed and batch, each with its own SGD):
forward with the losses, backward, optimizer step, interleaved (`fad.cli.bench.timing`), medians
reported. The model is compiled as the trainer does with SOLVER.COMPILE (`torch.compile` of the
whole module: graphs break at the host syncs of docs/ops.md). `time_ratio` = compiled / eager
step time (median over rounds); `compile_s` = the first compiled step (tracing and code
generation); `first_loss_diff` = |compiled - eager| total loss of the first step.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn

from fad.config import load_config
from fad.modeling import build_detector

from .batch import random_detection_batch
from .timing import time_rounds

TINY_CONFIG = "configs/fcos/fcos_tiny_synthetic.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-file", default=TINY_CONFIG, help="detector config")
    parser.add_argument("--size", type=int, nargs=2, default=(128, 160), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--backend", default="inductor",
                        help="torch.compile backend (inductor; eager or aot_eager to test)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)


def _step(net: nn.Module, params: list[nn.Parameter], batch: tuple) -> Callable[[], float]:
    """One training step of `net` on `batch` (SGD on `params`); returns the total loss."""
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)

    def step() -> float:
        loss = sum(net(*batch).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())
    return step


def run(args: argparse.Namespace) -> dict:
    cfg = load_config(args.config_file)
    batch = random_detection_batch(args.size, args.batch, args.classes)
    models = {}
    for name in ("eager", "compiled"):
        torch.manual_seed(0)
        models[name] = build_detector(cfg, args.classes).train()
    steps = {name: _step(m if name == "eager" else torch.compile(m, backend=args.backend),
                         [p for p in m.parameters() if p.requires_grad], batch)
             for name, m in models.items()}
    torch._dynamo.reset()
    start = time.perf_counter()
    with torch.enable_grad():
        first = {"compiled": steps["compiled"]()}
        compile_s = time.perf_counter() - start
        first["eager"] = steps["eager"]()
    samples = time_rounds(steps, max(args.warmup - 1, 0), args.repeats, grad=True)
    times = samples.medians()
    return {"device": "cpu", "config": args.config_file, "input": list(args.size),
            "batch": args.batch, "backend": args.backend, "threads": torch.get_num_threads(),
            "eager_step_s": round(times["eager"], 4),
            "compiled_step_s": round(times["compiled"], 4),
            "time_ratio": round(samples.median_ratio("compiled", "eager"), 3),
            "compile_s": round(compile_s, 2),
            "first_loss_diff": abs(first["compiled"] - first["eager"])}
