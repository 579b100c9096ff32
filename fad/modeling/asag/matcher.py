"""Hungarian matching with area-weighted costs (proposals and decoder heads of ASAG)."""
from __future__ import annotations

from torch import Tensor

from fad.modeling.set_prediction import HungarianMatcher

from .boxes import area_weights


class AreaWeightedMatcher(HungarianMatcher):
    """Hungarian matching on (cost_class * focal + cost_bbox * L1 + cost_giou * (-GIoU)) * w_t.

    w_t = area_weight - (area_weight - 1) * sqrt(w * h) of target t (normalised cxcywh), or
    1 + (area_weight - 1) * sqrt(w * h) with `inverse` (the anchor generator's P6 patch).
    Focal cost with alpha 0.25, gamma 2. `__call__(logits [B, Q, C], boxes [B, Q, 4] normalised
    cxcywh, targets, query_mask [B, Q] bool)` matches only the queries with query_mask True and
    returns per image (query indices [M_i], target indices [M_i]) int64.
    """

    def __init__(self, cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 area_weight: float = 4.0, inverse: bool = False):
        super().__init__(cost_class, cost_bbox, cost_giou)
        self.area_weight = area_weight
        self.inverse = inverse

    def cost_matrix(self, logits: Tensor, boxes: Tensor, labels: Tensor, tgt_boxes: Tensor
                    ) -> Tensor:
        """[Q, C], [Q, 4], [T], [T, 4] -> [Q, T] area-weighted matching cost."""
        weight = area_weights(tgt_boxes, self.area_weight, self.inverse)
        return super().cost_matrix(logits, boxes, labels, tgt_boxes) * weight[None]
