"""The limit a training step's FLOPs set on this machine: `step_flops` (forward + backward,
counted by torch's FlopCounterMode on plain PyTorch ops) over the faster of two dense float32
products timed here (`dense_rates`: a 1024^3 GEMM and a channels-last 3x3 convolution, oneDNN
on the CPU). No step of that model runs faster here; `fraction_of_limit` = limit / measured."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from fad.ops.backends import BACKENDS, using

from .timing import time_rounds


def step_flops(model: torch.nn.Module, batch: tuple) -> int:
    """FLOPs of one forward + backward of `model` (train mode, returning a loss dict) on
    `batch`, every op backend on `reference` (plain PyTorch ops, which FlopCounterMode counts);
    the gradients are cleared after."""
    with contextlib.ExitStack() as stack:
        for op in BACKENDS:
            stack.enter_context(using(op, "reference"))
        with FlopCounterMode(display=False) as counter:
            sum(model(*batch).values()).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def dense_rates(repeats: int) -> dict[str, float]:
    """GFLOP/s of a float32 GEMM (1024^3) and of an NHWC 3x3 convolution forward (8 x 256 x 28 x
    20, 256 -> 256), medians of `repeats` rounds."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(1024, 1024, generator=g) for _ in range(2))
    x = torch.randn(8, 256, 28, 20, generator=g).to(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3, generator=g).to(memory_format=torch.channels_last)
    times = time_rounds({"mm": lambda: a @ b, "conv": lambda: F.conv2d(x, w, padding=1)},
                        2, repeats).medians()
    flops = {"mm": 2 * 1024 ** 3, "conv": 2 * 8 * 28 * 20 * 256 * 256 * 9}
    return {k: flops[k] / times[k] / 1e9 for k in flops}


def limit_keys(flops: int, step_s: dict[str, float], repeats: int) -> dict[str, float]:
    """The JSON keys of a step of `flops` FLOPs: `step_gflop`, `mm_gflops`, `conv_gflops`,
    `limit_step_s` (the step at the faster rate) and, for each `suffix -> measured seconds` of
    `step_s`, `fraction_of_limit<suffix>` = limit / measured."""
    rates = dense_rates(repeats)
    limit = flops / max(rates.values()) / 1e9
    return {"step_gflop": round(flops / 1e9, 3), "mm_gflops": round(rates["mm"], 1),
            "conv_gflops": round(rates["conv"], 1), "limit_step_s": round(limit, 5),
            **{f"fraction_of_limit{k}": round(limit / t, 3) for k, t in step_s.items()}}
