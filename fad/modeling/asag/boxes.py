"""ASAG box helpers: xyzr encoding, IoF, area weights (tensor shapes in each docstring); the
normalised cxcywh <-> pixel conversions are `fad.modeling.set_prediction.boxes`.

xyzr is the AdaMixer box parameterisation used by the RelationBlock and the AdaMixer heads:
(x, y) the box centre, z = log2(sqrt(w * h)) and r = log2(h / w) / 2, all in units of the
finest feature stride (4 pixels for P2), so a box has w = 2^(z - r) and h = 2^(z + r).
"""
from __future__ import annotations

import torch
from torch import Tensor


def xyxy_to_xyzr(boxes: Tensor, stride: float = 4.0) -> Tensor:
    """[..., 4] xyxy pixels -> [..., 4] xyzr in units of `stride`.

    z = log2(w * h + 1e-7) / 2, r = log2(h / (w + 1e-7) + 1e-7) / 2 (the reference's epsilons).
    """
    boxes = boxes / stride
    xy = (boxes[..., :2] + boxes[..., 2:]) / 2
    wh = boxes[..., 2:] - boxes[..., :2]
    z = (wh.prod(-1, keepdim=True) + 1e-7).log2() / 2
    r = (wh[..., 1:] / (wh[..., :1] + 1e-7) + 1e-7).log2() / 2
    return torch.cat([xy, z, r], -1)


def xyzr_to_wh(xyzr: Tensor) -> Tensor:
    """[..., 4] xyzr -> [..., 2] (w, h) = 2^z * (2^-r, 2^r), in the units of xyzr."""
    r = xyzr[..., 3:4]
    return 2.0 ** xyzr[..., 2:3] * 2.0 ** torch.cat([-r, r], -1)


def xyzr_to_xyxy(xyzr: Tensor, stride: float = 4.0) -> Tensor:
    """[..., 4] xyzr in units of `stride` -> [..., 4] xyxy pixels."""
    half = xyzr_to_wh(xyzr) / 2
    xy = xyzr[..., :2]
    return torch.cat([xy - half, xy + half], -1) * stride


def refine_xyzr(xyzr: Tensor, delta: Tensor) -> Tensor:
    """Apply predicted deltas [..., 4] to boxes [..., 4] (xyzr): xy += dxy * 2^z, zr += dzr."""
    xy = xyzr[..., :2] + delta[..., :2] * 2.0 ** xyzr[..., 2:3]
    return torch.cat([xy, xyzr[..., 2:] + delta[..., 2:]], -1)


def box_iof(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-6) -> Tensor:
    """Intersection over the first box's area: [..., N, 4], [..., M, 4] xyxy -> [..., N, M].

    The denominator (area of boxes1[n]) is clamped at `eps` as in the reference.
    """
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    lt = torch.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    rb = torch.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    overlap = (rb - lt).clamp(min=0).prod(-1)
    return overlap / area1.clamp(min=eps)[..., None]


def area_weights(boxes: Tensor, area_weight: float = 4.0, inverse: bool = False) -> Tensor:
    """Per-box weights [K] of normalised cxcywh boxes [K, 4] that favour small objects.

    a - (a - 1) * sqrt(w * h) (from a for a point to 1 for the whole image), or with
    `inverse` 1 + (a - 1) * sqrt(w * h) (the anchor generator's P6 patch). a = `area_weight`.
    """
    side = (boxes[:, 2] * boxes[:, 3]).sqrt()
    if inverse:
        return 1 + (area_weight - 1) * side
    return area_weight - (area_weight - 1) * side
