"""Detection transforms on torchvision.transforms.v2 tensors (tv_tensors.Image + BoundingBoxes).

Random choices are drawn from an explicit `torch.Generator` so that an augmentation is a pure
function of its seed (exact resume); with no generator the global RNG is used.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torchvision import tv_tensors
from torchvision.tv_tensors import BoundingBoxes
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F
from yacs.config import CfgNode


class ResizeShortSide:
    """Resize so the short side is one of `min_sizes` (random choice) and the long side is at
    most `max_size`; boxes follow."""

    def __init__(self, min_sizes: Sequence[int], max_size: int):
        self.min_sizes = [int(s) for s in min_sizes]
        if not self.min_sizes or min(self.min_sizes) <= 0 or max_size <= 0:
            raise ValueError(f"bad resize sizes: short side {self.min_sizes}, long side cap "
                             f"{max_size}; set INPUT.MIN_SIZE_* and INPUT.MAX_SIZE_* > 0")
        self.max_size = int(max_size)

    def output_size(self, height: int, width: int, short: int) -> tuple[int, int]:
        """(h, w) with the short side `short`, scaled down more if the long side passes the cap."""
        scale = min(short / min(height, width), self.max_size / max(height, width))
        return max(1, round(height * scale)), max(1, round(width * scale))

    def __call__(self, image: tv_tensors.Image, boxes: BoundingBoxes,
                 generator: torch.Generator | None) -> tuple[tv_tensors.Image, BoundingBoxes]:
        choice = 0
        if len(self.min_sizes) > 1:
            choice = int(torch.randint(len(self.min_sizes), (), generator=generator))
        size = self.output_size(*image.shape[-2:], self.min_sizes[choice])
        return v2.Resize(size, antialias=True)(image, boxes)


class RandomHorizontalFlip:
    """Mirror image and boxes with probability `prob`."""

    def __init__(self, prob: float):
        self.prob = float(prob)

    def __call__(self, image: tv_tensors.Image, boxes: BoundingBoxes,
                 generator: torch.Generator | None) -> tuple[tv_tensors.Image, BoundingBoxes]:
        if self.prob > 0 and float(torch.rand((), generator=generator)) < self.prob:
            return F.horizontal_flip(image), F.horizontal_flip(boxes)
        return image, boxes


class DetectionTransforms:
    """Run `steps` on (uint8 image [3, H, W], boxes [K, 4] xyxy) and return
    (float32 image [3, h, w] in [0, 1], float32 boxes [K, 4]) as plain tensors."""

    def __init__(self, steps: Sequence):
        self.steps = list(steps)

    def __call__(self, image: torch.Tensor, boxes: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        img = tv_tensors.Image(image)
        bxs = BoundingBoxes(boxes, format="XYXY", canvas_size=tuple(image.shape[-2:]))
        for step in self.steps:
            img, bxs = step(img, bxs, generator)
        out = F.to_dtype(img, torch.float32, scale=True).as_subclass(torch.Tensor)
        return out, bxs.as_subclass(torch.Tensor).to(torch.float32)


def build_transforms(cfg: CfgNode, is_train: bool) -> DetectionTransforms:
    """Training: random short side from INPUT.MIN_SIZE_TRAIN (long side <= MAX_SIZE_TRAIN) and
    flip with FLIP_PROB_TRAIN; test: MIN/MAX_SIZE_TEST, no flip."""
    if is_train:
        return DetectionTransforms([
            ResizeShortSide(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN),
            RandomHorizontalFlip(cfg.INPUT.FLIP_PROB_TRAIN),
        ])
    return DetectionTransforms([
        ResizeShortSide([cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST),
    ])
