"""The VOC devkit's matching and average precision, in numpy.

Rules (VOCevaldet / VOCap of the official devkit):
- boxes are 1-based inclusive pixels, so widths and heights are `x2 - x1 + 1`;
- detections of a class are taken by decreasing score (ties keep file order); each is matched
  to the ground truth of its image with the highest IoU (first one on ties), difficult
  objects included;
- IoU >= 0.5 with a non-difficult, not yet matched object: true positive; with an already
  matched object: false positive (duplicate); with a difficult object: ignored (neither);
  IoU < 0.5: false positive;
- recall = TP / (non-difficult objects), precision = TP / (TP + FP);
- AP is the area under the precision envelope at every recall change (VOC2010+), or with
  `use_07_metric` the mean over recall thresholds 0, 0.1, ..., 1 of the best precision at
  recall >= threshold (VOC2007). Thresholds are exactly k/10 (the devkits' float step
  0:0.1:1 drifts by one ulp at 0.3, so a recall of exactly 0.3 would miss that point there).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IOU_THRESHOLD = 0.5


@dataclass
class ClassGroundTruth:
    """Objects of one class in one image: boxes [G, 4] (1-based inclusive), difficult [G]."""

    boxes: np.ndarray
    difficult: np.ndarray


def inclusive_iou(box: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """IoU [G] of one box [4] with `gt_boxes` [G, 4], pixels counted inclusively (+1)."""
    iw = np.minimum(box[2], gt_boxes[:, 2]) - np.maximum(box[0], gt_boxes[:, 0]) + 1.0
    ih = np.minimum(box[3], gt_boxes[:, 3]) - np.maximum(box[1], gt_boxes[:, 1]) + 1.0
    overlap = (iw > 0) & (ih > 0)
    inter = np.where(overlap, iw * ih, 0.0)
    area = (box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
    gt_area = (gt_boxes[:, 2] - gt_boxes[:, 0] + 1.0) * (gt_boxes[:, 3] - gt_boxes[:, 1] + 1.0)
    union = area + gt_area - inter
    return np.where(overlap, inter / np.where(overlap, union, 1.0), 0.0)


def match_detections(image_ids: list[str], scores: np.ndarray, boxes: np.ndarray,
                     ground_truth: dict[str, ClassGroundTruth]) -> tuple[np.ndarray, np.ndarray]:
    """Flags tp [D], fp [D] (bool) of detections sorted by decreasing score.

    `image_ids` [D], `scores` [D], `boxes` [D, 4] are one class's detections in file order;
    `ground_truth` maps image id -> that class's objects (images without any may be absent).
    A detection matched to a difficult object has both flags False.
    """
    order = np.argsort(-scores, kind="stable")
    tp = np.zeros(len(order), dtype=bool)
    fp = np.zeros(len(order), dtype=bool)
    matched = {i: np.zeros(len(gt.boxes), dtype=bool) for i, gt in ground_truth.items()}
    for rank, d in enumerate(order):
        gt = ground_truth.get(image_ids[d])
        if gt is None or len(gt.boxes) == 0:
            fp[rank] = True
            continue
        ious = inclusive_iou(boxes[d], gt.boxes)
        best = int(np.argmax(ious))
        if ious[best] < IOU_THRESHOLD:
            fp[rank] = True
        elif gt.difficult[best]:
            continue
        elif matched[image_ids[d]][best]:
            fp[rank] = True
        else:
            tp[rank] = True
            matched[image_ids[d]][best] = True
    return tp, fp


def precision_recall(tp: np.ndarray, fp: np.ndarray,
                     num_positives: int) -> tuple[np.ndarray, np.ndarray]:
    """Recall [N] and precision [N] after each counted (TP or FP) detection, in rank order."""
    counted = tp | fp
    tp_cum = np.cumsum(tp[counted], dtype=np.float64)
    fp_cum = np.cumsum(fp[counted], dtype=np.float64)
    return tp_cum / num_positives, tp_cum / (tp_cum + fp_cum)


def average_precision(recall: np.ndarray, precision: np.ndarray,
                      use_07_metric: bool = False) -> float:
    """VOC AP (fraction 0-1) of a precision/recall curve (both [N], recall non-decreasing)."""
    if use_07_metric:
        ap = 0.0
        for k in range(11):
            above = precision[recall >= k / 10.0]
            ap += (float(above.max()) if above.size else 0.0) / 11.0
        return ap
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[steps] - mrec[steps - 1]) * mpre[steps]))
