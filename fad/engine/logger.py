"""Console/file logging, smoothed meters with ETA, and tensorboardX scalars."""
from __future__ import annotations

import datetime
import logging
import os
import sys
import time
from collections import defaultdict, deque

import torch

from .distributed import is_main_process


def setup_logger(output_dir: str | None, rank: int = 0) -> logging.Logger:
    """The "fad" logger: INFO to stdout on rank 0 and to `output_dir/log.txt` (per rank suffix)."""
    logger = logging.getLogger("fad")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
    fmt = logging.Formatter("[%(asctime)s] %(message)s", datefmt="%m/%d %H:%M:%S")
    if rank == 0:
        out = logging.StreamHandler(sys.stdout)
        out.setFormatter(fmt)
        logger.addHandler(out)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        name = "log.txt" if rank == 0 else f"log_rank{rank}.txt"
        fh = logging.FileHandler(os.path.join(output_dir, name))
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    return logger


class MetricLogger:
    """Windowed medians of scalars plus an ETA from the mean iteration time."""

    def __init__(self, max_iter: int, start_iter: int = 0, window: int = 20):
        self.max_iter, self.start_iter = max_iter, start_iter
        self.meters: dict[str, deque] = defaultdict(lambda: deque(maxlen=window))
        self.start = time.time()
        self.last = self.start

    def update(self, **scalars: float) -> None:
        for k, v in scalars.items():
            self.meters[k].append(float(v))

    def tick(self) -> float:
        """Record one iteration's duration; returns it in seconds."""
        now = time.time()
        dt, self.last = now - self.last, now
        self.update(time=dt)
        return dt

    def median(self, key: str) -> float:
        values = sorted(self.meters[key])
        return values[len(values) // 2] if values else float("nan")

    def eta_seconds(self, iteration: int) -> float:
        done = iteration + 1 - self.start_iter
        return (time.time() - self.start) / max(done, 1) * (self.max_iter - iteration - 1)

    def format(self, iteration: int, lr: float) -> str:
        eta = datetime.timedelta(seconds=int(self.eta_seconds(iteration)))
        meters = "  ".join(f"{k}: {self.median(k):.4f}" for k in sorted(self.meters) if k != "time")
        mem = ""
        if torch.cuda.is_available():
            mem = f"  max mem: {torch.cuda.max_memory_allocated() / 2**20:.0f}M"
        return (f"eta: {eta}  iter: {iteration + 1}/{self.max_iter}  {meters}  "
                f"time: {self.median('time'):.3f}s  lr: {lr:.6f}{mem}")


class TensorboardWriter:
    """tensorboardX scalars under `output_dir/tb`; does nothing off the main rank."""

    def __init__(self, output_dir: str):
        self.writer = None
        if is_main_process():
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(os.path.join(output_dir, "tb"))

    def add_scalars(self, scalars: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for k, v in scalars.items():
                self.writer.add_scalar(k, float(v), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
