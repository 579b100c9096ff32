"""The one timer of the benchmark sub-commands: candidates interleaved, warm-up, medians.

    samples = time_rounds({"ours": step_a, "theirs": step_b}, warmup=1, repeats=5,
                          device=device, grad=True)
    samples.medians()                      # {"ours": s, "theirs": s}, median wall seconds
    samples.median_ratio("theirs", "ours") # median over rounds of theirs / ours

Every round calls each candidate once, in the order given, so a change of machine load hits all
of them alike; the first `warmup` rounds are not recorded. On a CUDA device the GPU is
synchronised before and after each call, so a sample is the time until its kernels finished
(on the CPU nothing is synchronised). Each sample also records the process CPU time of the call.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from fad.errors import FadError


@dataclass
class Samples:
    """Seconds of every recorded round, per candidate: `wall` (perf_counter) and `cpu` (process
    CPU time, all threads; less disturbed by other jobs, but it counts threads spinning)."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]

    def medians(self, cpu: bool = False) -> dict[str, float]:
        """Median seconds per call of each candidate."""
        times = self.cpu if cpu else self.wall
        return {name: statistics.median(ts) for name, ts in times.items()}

    def median_ratio(self, num: str, den: str, cpu: bool = False) -> float:
        """Median over the rounds of time(`num`) / time(`den`) in the same round."""
        times = self.cpu if cpu else self.wall
        return statistics.median(a / b for a, b in zip(times[num], times[den]))


def synchronize(device: torch.device | None) -> None:
    """Wait for the GPU's queued work when `device` is a CUDA device (nothing otherwise)."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def time_rounds(calls: Mapping[str, Callable[[], object]], warmup: int, repeats: int,
                device: torch.device | None = None, grad: bool = False) -> Samples:
    """`warmup` untimed then `repeats` timed rounds, each calling every zero-argument function of
    `calls` once in order, with autograd on only if `grad`; CUDA synchronised around each call
    when `device` is a CUDA device."""
    if repeats < 1:
        raise FadError(f"--repeats must be at least 1 to time anything, got {repeats}")
    wall: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, list[float]] = {name: [] for name in calls}
    with torch.set_grad_enabled(grad):
        for round_ in range(warmup + repeats):
            for name, call in calls.items():
                synchronize(device)
                t0, c0 = time.perf_counter(), time.process_time()
                call()
                synchronize(device)
                t1, c1 = time.perf_counter(), time.process_time()
                if round_ >= warmup:
                    wall[name].append(t1 - t0)
                    cpu[name].append(c1 - c0)
    return Samples(wall, cpu)

