"""FCOS-imprv locations and target assignment (Tian et al., TPAMI 2020: centre sampling).

Locations of a level with stride s sit at (x*s + s//2, y*s + s//2). A location is a positive of
a ground-truth box when it lies inside the box's centre region (radius 1.5 strides, clipped to
the box) and max(l, t, r, b) falls in its level's size range; ties go to the smallest box.
"""
from __future__ import annotations

import torch
from torch import Tensor

STRIDES = (8, 16, 32, 64, 128)  # FPN levels P3-P7 (the one definition: head FLOPs, cost, bench)
SIZE_RANGES = ((0.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, float("inf")))


def make_locations(shapes: list[tuple[int, int]], strides: tuple[int, ...], device: torch.device
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """Centres, stride and size range of every location.

    Returns `points` [A, 2] (x, y), `point_strides` [A] and `ranges` [A, 2], A = sum H_l*W_l,
    level-major then row-major, matching `flatten_level_outputs`.
    """
    points, point_strides, ranges = [], [], []
    for (h, w), s, rng in zip(shapes, strides, SIZE_RANGES):
        ys = torch.arange(h, device=device, dtype=torch.float32) * s + s // 2
        xs = torch.arange(w, device=device, dtype=torch.float32) * s + s // 2
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], 1))
        point_strides.append(torch.full((h * w,), float(s), device=device))
        ranges.append(torch.stack([torch.full((h * w,), bound, device=device) for bound in rng], 1))
    return torch.cat(points), torch.cat(point_strides), torch.cat(ranges)


def assign_targets(points: Tensor, point_strides: Tensor, ranges: Tensor, boxes: Tensor,
                   labels: Tensor, radius: float = 1.5) -> tuple[Tensor, Tensor]:
    """Targets of one image.

    points [A, 2], point_strides [A], ranges [A, 2], boxes [G, 4] xyxy, labels [G] ->
    `cls_target` [A] (label, or -1 for background) and `reg_target` [A, 4] (l, t, r, b in
    pixels, meaningful at positives only).
    """
    num = points.shape[0]
    if boxes.numel() == 0:
        return labels.new_full((num,), -1), points.new_zeros((num, 4))
    x, y = points[:, 0:1], points[:, 1:2]
    ltrb = torch.stack([x - boxes[:, 0], y - boxes[:, 1], boxes[:, 2] - x, boxes[:, 3] - y], 2)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    r = point_strides[:, None] * radius
    inside_centre = (
        (x > torch.maximum(cx - r, boxes[:, 0])) & (x < torch.minimum(cx + r, boxes[:, 2]))
        & (y > torch.maximum(cy - r, boxes[:, 1])) & (y < torch.minimum(cy + r, boxes[:, 3])))
    max_reg = ltrb.max(dim=2).values
    in_range = (max_reg >= ranges[:, 0:1]) & (max_reg <= ranges[:, 1:2])
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[None].expand(num, -1)
    area = torch.where(inside_centre & in_range, area, torch.full_like(area, float("inf")))
    min_area, best = area.min(dim=1)
    cls_target = labels[best].clone()
    cls_target[torch.isinf(min_area)] = -1
    reg_target = ltrb[torch.arange(num, device=points.device), best]
    return cls_target, reg_target


def centerness_target(reg_target: Tensor) -> Tensor:
    """sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)) for `reg_target` [P, 4] -> [P]."""
    lr, tb = reg_target[:, 0::2], reg_target[:, 1::2]
    ratio = (lr.min(1).values / lr.max(1).values) * (tb.min(1).values / tb.max(1).values)
    return torch.sqrt(ratio.clamp(min=0))
