"""What the set-prediction detectors (Deformable / Sparse DETR, ASAG) share: checked targets as
normalised cxcywh boxes (targets.py, boxes.py), the Hungarian matcher base (matcher.py) and the
criterion helpers (losses.py). `fad.modeling.detr` and `fad.modeling.asag` import these."""
from .boxes import cxcywh_to_xyxy, denormalize_cxcywh, normalize_xyxy, values_like
from .losses import average_num_boxes, giou_loss, matched_pairs
from .matcher import HungarianMatcher, focal_class_cost, hungarian_assignment
from .targets import normalized_targets

__all__ = ["HungarianMatcher", "average_num_boxes", "cxcywh_to_xyxy", "denormalize_cxcywh",
           "focal_class_cost", "giou_loss", "hungarian_assignment", "matched_pairs",
           "normalize_xyxy", "normalized_targets", "values_like"]
