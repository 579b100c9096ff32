"""Pieces of the set criteria of DETR and ASAG: the loss normaliser and the matched pairs."""
from __future__ import annotations

import torch
from torch import Tensor

from fad.utils.dist import all_reduce_mean


def average_num_boxes(targets: list[dict], device: torch.device) -> float:
    """Target boxes in the batch, averaged over ranks when distributed, at least 1."""
    num = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
    return max(float(all_reduce_mean(num)), 1.0)


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
