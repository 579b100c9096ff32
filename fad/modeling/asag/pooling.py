"""Multi-scale RoIAlign over P2-P5 with the FPN level mapping (RelationBlock, SparseRCNN head)."""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import box_area, roi_align


def fpn_levels(boxes: Tensor, num_levels: int, finest_level: int = 2,
               canonical_size: float = 224.0, canonical_level: int = 4) -> Tensor:
    """[K, 4] xyxy pixels -> [K] int64 level index in [0, num_levels).

    floor(canonical_level + log2(sqrt(area) / canonical_size) + 1e-6) - finest_level, clamped:
    the mapping of torchvision's MultiScaleRoIAlign (the reference's pooler).
    """
    level = torch.floor(canonical_level + torch.log2(box_area(boxes).sqrt() / canonical_size)
                        + 1e-6)
    return (level.clamp(finest_level, finest_level + num_levels - 1) - finest_level).long()


def multiscale_roi_align(features: list[Tensor], boxes: Tensor, strides: list[int],
                         output_size: int = 7, sampling_ratio: int = 2) -> Tensor:
    """RoIAlign (aligned=False) of each box on its FPN level.

    `features` [B, C, H_l, W_l] per level with strides `strides` (P2 first); `boxes` [B, Q, 4]
    xyxy input pixels. Returns [B * Q, C, output_size, output_size] in (image, query) order.
    Equals torchvision's MultiScaleRoIAlign with the level scales fixed to 1 / stride instead of
    inferred from the first batch.
    """
    batch, num_queries = boxes.shape[:2]
    flat = boxes.reshape(-1, 4)
    index = torch.arange(batch, device=boxes.device, dtype=boxes.dtype)
    rois = torch.cat([index.repeat_interleave(num_queries)[:, None], flat], 1)
    finest = int(round(math.log2(strides[0])))
    levels = fpn_levels(flat, len(features), finest)
    out = features[0].new_zeros(len(rois), features[0].shape[1], output_size, output_size)
    for level, (feature, stride) in enumerate(zip(features, strides)):
        idx = torch.where(levels == level)[0]  # host sync: the boxes of a level, by size
        out[idx] = roi_align(feature, rois[idx].to(feature.dtype), output_size, 1.0 / stride,
                             sampling_ratio, aligned=False).to(out.dtype)
    return out
