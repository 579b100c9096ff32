"""Pieces of the set criteria of DETR and ASAG: the loss normaliser and the matched pairs."""
from __future__ import annotations

import torch
from torch import Tensor

from fad.utils.dist import all_reduce_mean, get_world_size


def average_num_boxes(targets: list[dict], device: torch.device) -> float | Tensor:
    """Target boxes in the batch, at least 1: a Python float in one process (the counts are
    shapes, known on the host); averaged over ranks when distributed, then a 0-dim tensor on
    `device` (not read back: no host sync)."""
    num = float(sum(len(t["labels"]) for t in targets))
    if get_world_size() == 1:
        return max(num, 1.0)
    return all_reduce_mean(torch.full((), num, device=device)).clamp(min=1.0)


def giou_loss(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """1 - GIoU of paired xyxy boxes [..., 4] -> [...] (no reduction). The value of
    torchvision's `generalized_box_iou_loss`, without its boolean-mask indexing (a
    data-dependent size: a host sync per call on a GPU)."""
    x1, y1, x2, y2 = boxes1.unbind(-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(-1)
    inter = ((torch.min(x2, x2g) - torch.max(x1, x1g)).clamp(min=0)
             * (torch.min(y2, y2g) - torch.max(y1, y1g)).clamp(min=0))
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
    iou = inter / (union + eps)
    hull = (torch.max(x2, x2g) - torch.min(x1, x1g)) * (torch.max(y2, y2g) - torch.min(y1, y1g))
    return 1 - (iou - (hull - union) / (hull + eps))


def matched_pairs(indices: list[tuple[Tensor, Tensor]], targets: list[dict]
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Flatten a matching over the batch.

    `indices` per image (query indices [M_i], target indices [M_i]) (a matcher's output);
    `targets` per image `labels` [T_i] and `boxes` [T_i, 4]. Returns image [M] and query [M]
    indices (on the matching's device) and the matched labels [M] and boxes [M, 4] (on the
    targets' device, in their dtype), M = sum M_i.
    """
    image = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(indices)])
    query = torch.cat([q for q, _ in indices])
    labels = torch.cat([t["labels"][j.to(t["labels"].device)]
                        for t, (_, j) in zip(targets, indices)])
    boxes = torch.cat([t["boxes"][j.to(t["boxes"].device)] for t, (_, j) in zip(targets, indices)])
    return image, query, labels, boxes
