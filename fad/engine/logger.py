"""Console/file logging, the log line's meters with ETA, and tensorboardX scalars."""
from __future__ import annotations

import datetime
import logging
import math
import os
import re
import sys
import time
from collections import defaultdict, deque

import numpy as np
import torch

from .distributed import is_main_process


def setup_logger(output_dir: str | None, rank: int = 0, verbose: bool = False) -> logging.Logger:
    """The "fad" logger: to stdout on rank 0 (INFO, or DEBUG when `verbose`) and everything
    (DEBUG too, e.g. pycocotools' summary) to `output_dir/log.txt` (per rank suffix)."""
    logger = logging.getLogger("fad")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
    fmt = logging.Formatter("[%(asctime)s] %(message)s", datefmt="%m/%d %H:%M:%S")
    if rank == 0:
        out = logging.StreamHandler(sys.stdout)
        out.setFormatter(fmt)
        out.setLevel(logging.DEBUG if verbose else logging.INFO)
        logger.addHandler(out)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        name = "log.txt" if rank == 0 else f"log_rank{rank}.txt"
        fh = logging.FileHandler(os.path.join(output_dir, name))
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    return logger


LOSS_TERM = re.compile(r"(?:dn_)?loss_([a-z0-9]+)(?:_\w+)?")


def line_scalars(scalars: dict[str, float]) -> dict[str, float]:
    """What the log line shows of one iteration's `scalars` (tensorboard gets them all): every
    scalar except loss terms that share a kind, which are summed into `loss_<kind>_all`. A term
    `[dn_]loss_<kind>[_<set>]` has the kind `<kind>`: DETR's `loss_ce` and `loss_ce_0` .. of the
    decoder layers and encoder, or ASAG's `loss_ce_{anchor,rpn,h<k>}` and `dn_loss_ce_*`, become
    one `loss_ce_all`; a kind with one term (FCOS's `loss_cls`) keeps its name."""
    kinds: dict[str, list[str]] = defaultdict(list)
    out = {}
    for name, value in scalars.items():
        match = LOSS_TERM.fullmatch(name)
        if match:
            kinds[match.group(1)].append(name)
        else:
            out[name] = value
    for kind, names in kinds.items():
        if len(names) == 1:
            out[names[0]] = scalars[names[0]]
        else:
            out[f"loss_{kind}_all"] = sum(scalars[n] for n in names)
    return out


class MetricLogger:
    """Scalars and iteration times for the periodic log line.

    Each value on the line is the mean over the last interval (the iterations since the previous
    line), followed in brackets by the median of the last `window` iterations; `time` is the real
    time per iteration (data loading included) and the ETA is the last interval's time per
    iteration times the iterations left, so it follows the machine's current speed. The loss
    terms of one kind are summed on the line (`line_scalars`).
    """

    def __init__(self, max_iter: int, window: int = 20):
        self.max_iter, self.window = max_iter, window
        self.meters: dict[str, deque] = defaultdict(lambda: deque(maxlen=window))
        self.interval: dict[str, list[float]] = defaultdict(list)
        self.last = time.time()

    def update(self, **scalars: float) -> None:
        """Record one iteration's scalars (as the line shows them, `line_scalars`)."""
        for k, v in line_scalars(scalars).items():
            self.meters[k].append(float(v))
            self.interval[k].append(float(v))

    def tick(self) -> float:
        """Record one iteration's duration (since the previous tick); returns it in seconds."""
        now = time.time()
        dt, self.last = now - self.last, now
        self.update(time=dt)
        return dt

    def median(self, key: str) -> float:
        """Median of `key` over the last `window` iterations (nan when never recorded)."""
        values = sorted(self.meters[key])
        return values[len(values) // 2] if values else float("nan")

    def mean(self, key: str) -> float:
        """Mean of `key` over the current interval (nan when not recorded in it)."""
        values = self.interval[key]
        return sum(values) / len(values) if values else float("nan")

    def eta_seconds(self, iteration: int) -> float:
        """Seconds left after (0-based) `iteration` at the last interval's speed."""
        per_iter = self.mean("time")
        return 0.0 if math.isnan(per_iter) else per_iter * (self.max_iter - iteration - 1)

    def format(self, iteration: int, lr: float) -> str:
        """The log line after (0-based) `iteration`; starts the next interval."""
        eta = datetime.timedelta(seconds=int(self.eta_seconds(iteration)))
        meters = "  ".join(f"{k}: {self.mean(k):.4f} ({self.median(k):.4f})"
                           for k in sorted(self.meters) if k != "time")
        mem = ""
        if torch.cuda.is_available():
            mem = f"  max mem: {torch.cuda.max_memory_allocated() / 2**20:.0f}M"
        line = (f"eta: {eta}  iter: {iteration + 1}/{self.max_iter}  {meters}  "
                f"time: {self.mean('time'):.3f}s ({self.median('time'):.3f}s)  lr: {lr:.6f}{mem}")
        self.interval.clear()
        return line


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

    def add_image(self, tag: str, image: np.ndarray, step: int) -> None:
        """An RGB uint8 image [H, W, 3] (e.g. a rendered matplotlib figure) under `tag`."""
        if self.writer is not None:
            self.writer.add_image(tag, image, step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
