"""Latency table of the FAD candidates for a cost-aware search (MODEL.FAD.COST latency).

Per candidate: the forward time of one augment edge (1x1 T -> C, the discrete op, 1x1 C -> T) on
a batch-1 input at every FPN level P3-P7 of the config's cost input size, summed over the levels;
plus `fixed_ms`, the genotype-independent rest of the augment head (cell-input adapters, reduce
convs, predictors). Inference mode, medians of `--repeats` interleaved rounds after one warm-up.
Write it once per device with `--json FILE` and set MODEL.FAD.COST_LATENCY_TABLE FILE; the
search checks that widths, cells, classes and input size match its config.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from fad.config import load_config
from fad.nas.primitives import primitives
from fad.search.cost import (
    FixedHeadPart,
    cost_input_size,
    edge_module,
    latency_settings,
    level_sizes,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-file", default="", metavar="FILE",
                        help="search config (widths, cells, MODEL.FAD.COST_INPUT_SIZE)")
    parser.add_argument("--num-classes", type=int, default=20, help="classes of the detector")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("opts", nargs="*", default=[], metavar="KEY VALUE",
                        help="config overrides, e.g. MODEL.FAD.COST_INPUT_SIZE (416,704)")


def _timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    def timed(fn: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1e3
    return timed


@torch.inference_mode()
def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    cfg = load_config(args.config_file or None, list(args.opts))
    f, t = cfg.MODEL.FAD, cfg.MODEL.FAD.TOWER_CHANNELS
    levels = level_sizes(cost_input_size(cfg))
    torch.manual_seed(0)
    edges = {n: edge_module(n, t, f.EDGE_CHANNELS).to(device).eval()
             for n in primitives(f.DIL3)[:-1]}
    fixed = FixedHeadPart(cfg, args.num_classes).to(device).eval()
    inputs = [torch.randn(1, t, h, w, device=device) for h, w in levels]
    feats = [torch.randn(1, cfg.MODEL.FPN.OUT_CHANNELS, h, w, device=device) for h, w in levels]
    jobs = {n: (lambda e=e: [e(x) for x in inputs]) for n, e in edges.items()}
    jobs["fixed"] = lambda: fixed(feats)
    timed = _timer(device)
    times: dict[str, list[float]] = {n: [] for n in jobs}
    for i in range(args.repeats + 1):
        for name, job in jobs.items():
            dt = timed(job)
            if i > 0:
                times[name].append(dt)
    ms = {n: round(statistics.median(v), 4) for n, v in times.items()}
    return {"device": str(device), "threads": torch.get_num_threads(), "unit": "ms",
            **latency_settings(cfg, args.num_classes), "levels": [list(s) for s in levels],
            "ops_ms": {n: ms[n] for n in edges}, "fixed_ms": ms["fixed"]}
