"""Run a detector over a test loader and gather (target, output) pairs on every rank."""
from __future__ import annotations

import logging
import sys
import time

import torch
from torch import nn
from tqdm import tqdm

from .distributed import all_gather_objects, is_main_process

logger = logging.getLogger("fad")


@torch.no_grad()
def inference(model: nn.Module, loader, device: torch.device) -> list[tuple[dict, dict]]:
    """Predictions of `model` for every image of `loader`, gathered from all ranks.

    Returns (target, output) pairs on the CPU: target keeps `image_id`, `size`, `orig_size`;
    output has `boxes` [K, 4] in the `size` frame, `scores` [K], `labels` [K].
    """
    model.eval()
    pairs: list[tuple[dict, dict]] = []
    start = time.time()
    bar = is_main_process() and sys.stderr.isatty()  # no bar characters in redirected logs
    for images, targets in tqdm(loader, desc="inference", disable=not bar):
        outputs = model([img.to(device) for img in images])
        for t, o in zip(targets, outputs):
            pairs.append(({k: v for k, v in t.items() if k in ("image_id", "size", "orig_size")},
                          {k: v.detach().cpu() for k, v in o.items()}))
    logger.info("inference on %d images took %.1fs", len(pairs), time.time() - start)
    gathered = [p for part in all_gather_objects(pairs) for p in part]
    return sorted(gathered, key=lambda p: int(p[0]["image_id"]))
