"""Detection transforms on torchvision.transforms.v2 tensors (tv_tensors.Image + BoundingBoxes).

A step maps (image, target, generator) to (image, target), where target holds `boxes`
(BoundingBoxes [K, 4] XYXY) and `labels` (int64 [K]); a step that drops boxes drops their labels.
Random choices are drawn from an explicit `torch.Generator` so that an augmentation is a pure
function of its seed (exact resume); with no generator the global RNG is used.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F
from torchvision.tv_tensors import BoundingBoxes
from yacs.config import CfgNode

from fad.modeling.image_batch import padded_canvas

Target = dict[str, torch.Tensor]  # "boxes": BoundingBoxes [K, 4] XYXY, "labels": int64 [K]


@contextmanager
def seeded_global_rng(generator: torch.Generator | None) -> Iterator[None]:
    """torchvision's random v2 transforms draw from the global RNG: inside this block it is
    seeded from one draw of `generator` and restored afterwards, so they become a pure function
    of the generator. With no generator the global RNG is left as it is."""
    if generator is None:
        yield
        return
    seed = int(torch.randint(2**62, (), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class ResizeShortSide:
    """Resize so the short side is one of `min_sizes` (random choice) and the long side is at
    most `max_size` (None: no cap); boxes follow."""

    def __init__(self, min_sizes: Sequence[int], max_size: int | None):
        self.min_sizes = [int(s) for s in min_sizes]
        if not self.min_sizes or min(self.min_sizes) <= 0 or (max_size is not None
                                                                and max_size <= 0):
            raise ValueError(f"ResizeShortSide: sizes must be > 0 (and at least one short "
                             f"side), got short sides {self.min_sizes}, long side cap {max_size}")
        self.max_size = None if max_size is None else int(max_size)

    def output_size(self, height: int, width: int, short: int) -> tuple[int, int]:
        """(h, w) with the short side `short`, scaled down more if the long side passes the cap."""
        scale = short / min(height, width)
        if self.max_size is not None:
            scale = min(scale, self.max_size / max(height, width))
        return max(1, round(height * scale)), max(1, round(width * scale))

    def __call__(self, image: tv_tensors.Image, target: Target,
                 generator: torch.Generator | None) -> tuple[tv_tensors.Image, Target]:
        choice = 0
        if len(self.min_sizes) > 1:
            choice = int(torch.randint(len(self.min_sizes), (), generator=generator))
        size = self.output_size(*image.shape[-2:], self.min_sizes[choice])
        return v2.Resize(size, antialias=True)(image, target)


def padded_size(cfg: CfgNode, input_size: Sequence[int]) -> tuple[int, int]:
    """(H, W) of `input_size` padded up to a multiple of INPUT.SIZE_DIVISIBILITY."""
    return padded_canvas(input_size, cfg.INPUT.SIZE_DIVISIBILITY)


def padded_train_size(cfg: CfgNode, height: int, width: int) -> tuple[int, int]:
    """(H, W) a (height, width) image takes in a training batch at the largest short side of
    INPUT.MIN_SIZE_TRAIN: resized as `ResizeShortSide` does (long side <= MAX_SIZE_TRAIN), then
    padded to INPUT.SIZE_DIVISIBILITY (the key of DATALOADER.SIZE_GROUPING)."""
    resize = ResizeShortSide(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN)
    return padded_size(cfg, resize.output_size(height, width, max(resize.min_sizes)))


class RandomHorizontalFlip:
    """Mirror image and boxes with probability `prob`."""

    def __init__(self, prob: float):
        self.prob = float(prob)

    def __call__(self, image: tv_tensors.Image, target: Target,
                 generator: torch.Generator | None) -> tuple[tv_tensors.Image, Target]:
        if self.prob > 0 and float(torch.rand((), generator=generator)) < self.prob:
            return F.horizontal_flip(image), {**target, "boxes": F.horizontal_flip(target["boxes"])}
        return image, target


class RandomResizeThenCrop:
    """With probability `prob`: resize the short side to one of `resize_sizes` (no long-side
    cap), then crop an h x w region at a random place (v2.RandomCrop), h and w each drawn
    uniformly from [crop_size[0], min(side, crop_size[1])]. Boxes are clipped to the crop; those
    left without area (outside it, or slivers under 1 px) are dropped with their labels
    (v2.SanitizeBoundingBoxes). The crop branch of the DETR / ASAG 3x-schedule augmentation."""

    def __init__(self, prob: float, resize_sizes: Sequence[int], crop_size: Sequence[int]):
        if len(crop_size) != 2 or not 0 < crop_size[0] <= crop_size[1]:
            raise ValueError(f"crop_size must be (min, max) with 0 < min <= max, got "
                             f"{tuple(crop_size)}")
        self.prob = float(prob)
        self.resize = ResizeShortSide(resize_sizes, None)
        self.crop_min, self.crop_max = int(crop_size[0]), int(crop_size[1])
        self.sanitize = v2.SanitizeBoundingBoxes()

    def _side(self, size: int, generator: torch.Generator | None) -> int:
        """A crop side for an image side of `size`: uniform in [crop_min, min(size, crop_max)]
        (the whole side when it is under crop_min)."""
        high = min(size, self.crop_max)
        return int(torch.randint(min(self.crop_min, high), high + 1, (), generator=generator))

    def __call__(self, image: tv_tensors.Image, target: Target,
                 generator: torch.Generator | None) -> tuple[tv_tensors.Image, Target]:
        if self.prob <= 0 or float(torch.rand((), generator=generator)) >= self.prob:
            return image, target
        image, target = self.resize(image, target, generator)
        height, width = image.shape[-2:]
        size = (self._side(height, generator), self._side(width, generator))
        with seeded_global_rng(generator):
            image, target = v2.RandomCrop(size)(image, target)
        return self.sanitize(image, target)


class DetectionTransforms:
    """Run `steps` on (uint8 image [3, H, W], boxes [K, 4] xyxy, labels int64 [K]) and return
    (float32 image [3, h, w] in [0, 1], float32 boxes [K', 4], labels [K']) as plain tensors
    (K' < K when a step drops boxes)."""

    def __init__(self, steps: Sequence):
        self.steps = list(steps)

    def __call__(self, image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor,
                 generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        img = tv_tensors.Image(image)
        target = {"boxes": BoundingBoxes(boxes, format="XYXY", canvas_size=tuple(image.shape[-2:])),
                  "labels": labels}
        for step in self.steps:
            img, target = step(img, target, generator)
        out = F.to_dtype(img, torch.float32, scale=True).as_subclass(torch.Tensor)
        return (out, target["boxes"].as_subclass(torch.Tensor).to(torch.float32),
                target["labels"])


def build_transforms(cfg: CfgNode, is_train: bool) -> DetectionTransforms:
    """Training: flip with FLIP_PROB_TRAIN, with INPUT.CROP.ENABLED the resize + crop branch
    (probability INPUT.CROP.PROB), then a random short side from INPUT.MIN_SIZE_TRAIN (long side
    <= MAX_SIZE_TRAIN); test: MIN/MAX_SIZE_TEST, no flip."""
    if not is_train:
        return DetectionTransforms([
            ResizeShortSide([cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST),
        ])
    steps = [RandomHorizontalFlip(cfg.INPUT.FLIP_PROB_TRAIN)]
    if cfg.INPUT.CROP.ENABLED:
        crop = cfg.INPUT.CROP
        steps.append(RandomResizeThenCrop(crop.PROB, crop.RESIZE_SIZES, crop.SIZE))
    steps.append(ResizeShortSide(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN))
    return DetectionTransforms(steps)
