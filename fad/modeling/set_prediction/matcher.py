"""Hungarian matching of predictions to targets (scipy's linear_sum_assignment), the base of
DETR's matcher and ASAG's area-weighted one.

The assignment runs on the host (scipy): one copy of each image's cost matrix to the CPU, the
one host sync of the set-prediction losses that stays (docs/ops.md, named syncs). It is done by
`HungarianMatcher.assignment`, a replaceable hook: the device audit (`fad.cli.device_audit`)
swaps in a stand-in that runs on fake tensors so the audit continues past it.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchvision.ops import generalized_box_iou

from .boxes import cxcywh_to_xyxy


def focal_class_cost(logits: Tensor, labels: Tensor, alpha: float = 0.25, gamma: float = 2.0
                     ) -> Tensor:
    """[Q, C] logits, [T] labels -> [Q, T]: focal loss of calling query q class labels[t],
    minus the focal loss of calling it background."""
    prob = logits.sigmoid()
    neg = (1 - alpha) * prob.pow(gamma) * -(1 - prob + 1e-8).log()
    pos = alpha * (1 - prob).pow(gamma) * -(prob + 1e-8).log()
    return pos[:, labels] - neg[:, labels]


def hungarian_assignment(cost: Tensor, query_mask: Tensor | None = None
                         ) -> tuple[Tensor, Tensor]:
    """Minimum-cost one-to-one assignment of a [Q, T] `cost` on the host (scipy), among the
    queries with `query_mask` [Q] True (all when None).

    Returns (query indices [M], target indices [M]) int64 on the cost's device, sorted by
    query, M = min(valid Q, T).
    """
    host = cost.cpu()
    queries = torch.arange(len(host))
    if query_mask is not None:
        queries = queries[query_mask.cpu()]
    rows, cols = linear_sum_assignment(host[queries].numpy())
    return (queries[torch.as_tensor(rows, dtype=torch.int64)].to(cost.device),
            torch.as_tensor(cols, dtype=torch.int64).to(cost.device))


class HungarianMatcher:
    """One-to-one assignment minimising
    cost_class * focal cost + cost_bbox * L1(cxcywh) + cost_giou * (-GIoU).

    `__call__(logits [N, Q, C], boxes [N, Q, 4] (normalised cxcywh), targets, query_mask)`:
    targets are dicts with `labels` [T_i] and `boxes` [T_i, 4] (normalised cxcywh);
    `query_mask` [N, Q] bool (optional) marks the queries that may be matched.
    Returns per image (query indices [M_i], target indices [M_i]) int64 on the logits'
    device, M_i = min(Q_i, T_i). Subclasses change the cost by overriding `cost_matrix`.

    `assignment` (class attribute, `hungarian_assignment`: scipy on the host) solves each
    image's [Q, T] cost; the device audit replaces it while it runs.
    """

    assignment: Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor]] = staticmethod(
        hungarian_assignment)

    def __init__(self, cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0):
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: cost_class, cost_bbox and cost_giou are all 0; "
                             "one must be > 0")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def cost_matrix(self, logits: Tensor, boxes: Tensor, labels: Tensor, tgt_boxes: Tensor
                    ) -> Tensor:
        """[Q, C], [Q, 4], [T], [T, 4] -> [Q, T] matching cost."""
        cost = self.cost_class * focal_class_cost(logits, labels, self.focal_alpha,
                                                  self.focal_gamma)
        cost = cost + self.cost_bbox * torch.cdist(boxes, tgt_boxes, p=1)
        giou = generalized_box_iou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(tgt_boxes))
        return cost - self.cost_giou * giou

    @torch.no_grad()
    def __call__(self, logits: Tensor, boxes: Tensor, targets: list[dict],
                 query_mask: Tensor | None = None) -> list[tuple[Tensor, Tensor]]:
        indices = []
        for i, tgt in enumerate(targets):
            if len(tgt["labels"]) == 0:  # host sync: ASAG's frame targets (adaptive count)
                empty = torch.empty(0, dtype=torch.int64, device=logits.device)
                indices.append((empty, empty.clone()))
                continue
            cost = self.cost_matrix(logits[i].float(), boxes[i].float(), tgt["labels"],
                                    tgt["boxes"].float())
            mask = None if query_mask is None else query_mask[i]
            pairs = self.assignment(cost, mask)  # host sync: scipy's Hungarian assignment
            indices.append(pairs)
        return indices
