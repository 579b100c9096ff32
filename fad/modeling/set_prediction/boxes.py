"""Box conversions of the set-prediction detectors (DETR family, ASAG): normalised cxcywh, the
form their matchers and losses use, and xyxy pixels."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import box_convert


def values_like(values: Sequence[float], like: Tensor) -> Tensor:
    """[len(values)] tensor in the dtype and on the device of `like`, made there from Python
    numbers (no host tensor and no copy, unlike `like.new_tensor(values)` on a GPU)."""
    return torch.stack([torch.full((), v, dtype=like.dtype, device=like.device) for v in values])


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """[..., 4] (cx, cy, w, h) -> [..., 4] (x0, y0, x1, y1)."""
    return box_convert(boxes, "cxcywh", "xyxy")


def _whwh(image_hw: Tensor, like: Tensor) -> Tensor:
    """[..., 2] (h, w) -> [..., 4] (w, h, w, h) in the dtype and on the device of `like`."""
    h, w = image_hw[..., 0].to(like), image_hw[..., 1].to(like)
    return torch.stack([w, h, w, h], -1)


def normalize_xyxy(boxes: Tensor, image_hw: Tensor) -> Tensor:
    """[..., 4] xyxy pixels -> [..., 4] (cx, cy, w, h) as fractions of the image size.

    `image_hw` [..., 2] holds (h, w) of the unpadded image and broadcasts against the boxes'
    leading dimensions: [2] for boxes [K, 4] of one image, [B, 1, 2] for boxes [B, Q, 4].
    """
    return box_convert(boxes, "xyxy", "cxcywh") / _whwh(image_hw, boxes)


def denormalize_cxcywh(boxes: Tensor, image_hw: Tensor) -> Tensor:
    """Inverse of `normalize_xyxy`: [..., 4] normalised cxcywh -> [..., 4] xyxy pixels."""
    return box_convert(boxes * _whwh(image_hw, boxes), "cxcywh", "xyxy")
