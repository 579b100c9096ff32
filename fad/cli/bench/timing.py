"""Side-by-side timing shared by the benchmark sub-commands."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def interleaved_medians(calls: dict[str, Callable[[], object]], warmup: int, repeats: int
                        ) -> dict[str, float]:
    """Median seconds per call of each zero-argument function under `torch.no_grad`; every round
    calls each function once, so a change of machine load hits all of them alike. The first
    `warmup` rounds are not timed."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.no_grad():
        for round_ in range(warmup + repeats):
            for name, call in calls.items():
                t0 = time.perf_counter()
                call()
                if round_ >= warmup:
                    times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}
