"""Losses of the adaptive sparse anchor generator: class-agnostic Hungarian matching per patch
("frame"), quality focal loss, quality- and area-weighted L1 + GIoU.

Every prediction set is a stack of frames: the P6 patch (the whole image; in training also its
h-, v- and hv-flips), the four P5 quadrants and the probed P4 / P3 patches. Targets of a frame are
the ground-truth boxes whose centre lies in it (patches: also no larger than it), clipped to it
and expressed in its own normalised (cx, cy, w, h).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert, box_iou

from fad.modeling.set_prediction import average_num_boxes, giou_loss, values_like

from .anchor_generator import QUADRANTS, AnchorRecords
from .boxes import area_weights
from .criterion import dual_weights
from .matcher import AreaWeightedMatcher


def quality_focal_loss(logits: Tensor, iou_target: Tensor, positive: Tensor, weight: Tensor,
                       ignore: Tensor, beta: float = 2.0) -> Tensor:
    """Per-anchor quality focal loss (all [N]; returns [N]).

    Positives: BCE(logit, IoU) * |IoU - sigmoid|^beta * weight (the area weight); negatives:
    BCE(logit, 0) * sigmoid^beta (no alpha, no weight); ignored anchors: 0.
    """
    prob = logits.sigmoid()
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits),
                                             reduction="none") * prob.pow(beta)
    pos = (F.binary_cross_entropy_with_logits(logits, iou_target, reduction="none")
           * (iou_target - prob).abs().pow(beta) * weight)
    return torch.where(positive, pos, neg).masked_fill(ignore, 0.0)


def flip_p6_targets(boxes: Tensor, reference_bug: bool = False) -> list[Tensor]:
    """Targets of the P6 patch and its flips: [as is, h-flip, v-flip, hv-flip], each [T, 4].

    `boxes` [T, 4] normalised cxcywh. A correct flip mirrors the centre: h (0.2, 0.3, 0.1, 0.2)
    -> (0.8, 0.3, 0.1, 0.2). `reference_bug` applies the xyxy flip formula (x0, y0, x1, y1) ->
    (1 - x1, y0, 1 - x0, y1) to the cxcywh numbers as the reference does, giving
    (0.9, 0.3, 0.8, 0.2): centres and sizes of the flipped targets are then wrong.
    """
    if reference_bug:
        def hflip(b: Tensor) -> Tensor:
            return torch.stack([1 - b[:, 2], b[:, 1], 1 - b[:, 0], b[:, 3]], 1)

        def vflip(b: Tensor) -> Tensor:
            return torch.stack([b[:, 0], 1 - b[:, 3], b[:, 2], 1 - b[:, 1]], 1)
    else:
        def hflip(b: Tensor) -> Tensor:
            return torch.cat([1 - b[:, :1], b[:, 1:]], 1)

        def vflip(b: Tensor) -> Tensor:
            return torch.cat([b[:, :1], 1 - b[:, 1:2], b[:, 2:]], 1)
    return [boxes, hflip(boxes), vflip(boxes), vflip(hflip(boxes))]


def frame_targets(boxes: Tensor, origin: Tensor, extent: Tensor, limit_size: bool) -> Tensor:
    """Targets of one frame in its own coordinates.

    `boxes` [T, 4] normalised cxcywh (image units); the frame spans `origin` [2] to
    `origin + extent` [2] (x, y, image units). Boxes whose centre is inside the frame (borders
    included) and, with `limit_size`, whose w, h <= the extent; clipped to the frame and mapped
    to frame units. Returns [T', 4] cxcywh.
    """
    centre = boxes[:, :2]
    inside = ((centre >= origin) & (centre <= origin + extent)).all(1)
    if limit_size:
        inside &= (boxes[:, 2:] <= extent).all(1)
    xyxy = box_convert(boxes[inside], "cxcywh", "xyxy")  # host sync: targets in the frame
    low, high = origin.repeat(2), (origin + extent).repeat(2)
    xyxy = (torch.minimum(torch.maximum(xyxy, low), high) - low) / extent.repeat(2)
    return box_convert(xyxy, "xyxy", "cxcywh")


class AnchorLoss(nn.Module):
    """Anchor-generator losses of `SparseAnchors.records` against normalised targets.

    `forward(records, targets)`: `targets[i]["boxes"]` [T_i, 4] cxcywh normalised by the
    unpadded image size. Per frame: class-agnostic Hungarian matching (cost 2 * focal + 5 * L1
    + 2 * (-GIoU), times the per-target area weight 4 - 3 sqrt(wh), at P6 1 + 3 sqrt(wh));
    quality focal loss (target IoU, area weight on positives; unmatched anchors with IoU >= 0.5
    to any target ignored); L1 + GIoU weighted by the quality weight
    sigmoid(4.5 (s^0.4 IoU^0.6 - 1/3)) / sigmoid(3) (`criterion.dual_weights`' w_pos) x area
    weight. Sums are divided
    by the number of targets (mean over ranks, >= 1); the P4 / P3 patch sums are first scaled by
    4 / number of patches. Returns weighted `loss_ce_anchor`, `loss_bbox_anchor`,
    `loss_giou_anchor` (weights 8, 4, 2).

    `reference_flip_bug`: targets of the flipped P6 patches follow the reference's wrong formula
    (see `flip_p6_targets`); False (default) flips them correctly, as the paper describes.
    """

    def __init__(self, weight_ce: float = 8.0, weight_bbox: float = 4.0, weight_giou: float = 2.0,
                 cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 area_weight: float = 4.0, gamma1: float = 0.4, gamma2: float = 0.6,
                 beta: float = 2.0, ignore_iou: float = 0.5, patch_scale: float = 4.0,
                 reference_flip_bug: bool = False):
        super().__init__()
        self.weights = (weight_ce, weight_bbox, weight_giou)
        self.matcher = AreaWeightedMatcher(cost_class, cost_bbox, cost_giou, area_weight)
        self.p6_matcher = AreaWeightedMatcher(cost_class, cost_bbox, cost_giou, area_weight,
                                              inverse=True)
        self.area_weight = area_weight
        self.gamma1, self.gamma2, self.beta = gamma1, gamma2, beta
        self.ignore_iou = ignore_iou
        self.patch_scale = patch_scale
        self.reference_flip_bug = reference_flip_bug

    def forward(self, records: AnchorRecords, targets: list[dict]) -> dict[str, Tensor]:
        num_boxes = average_num_boxes(targets, records.p5.device)
        boxes = [t["boxes"].to(records.p5) for t in targets]

        flips = records.p6.shape[1]
        p6_targets = [flipped for b in boxes
                      for flipped in flip_p6_targets(b, self.reference_flip_bug)[:flips]]
        total = self.frame_losses(records.p6.flatten(0, 1), p6_targets, inverse=True)

        half = values_like([0.5, 0.5], records.p5)
        p5_targets = [frame_targets(b, values_like([c / 2, r / 2], records.p5), half, False)
                      for b in boxes for r, c in QUADRANTS]
        total = total + self.frame_losses(records.p5.flatten(0, 1), p5_targets, inverse=False)

        preds = [r.preds for r in records.patches]
        if preds and sum(len(p) for p in preds):
            patch_targets = []
            for rec in records.patches:
                wh = records.image_wh[rec.owners]
                origins = rec.corners.to(wh) * rec.stride / wh
                extent = records.patch_size * rec.stride / wh
                owners = rec.owners.tolist()  # host sync: one target list per patch
                frames = list(zip(owners, origins, extent))  # host sync: one frame per patch
                patch_targets += [frame_targets(boxes[b], o, e, True)  # host sync: owner b
                                  for b, o, e in frames]
            preds = torch.cat(preds)
            total = total + self.frame_losses(preds, patch_targets, inverse=False) * (
                self.patch_scale / len(preds))
        names = ("loss_ce_anchor", "loss_bbox_anchor", "loss_giou_anchor")
        return {name: w * value / num_boxes for name, w, value in zip(names, self.weights, total)}

    def frame_losses(self, preds: Tensor, targets: list[Tensor], inverse: bool) -> Tensor:
        """Unweighted, unnormalised sums [3] (focal, L1, GIoU) of frames `preds` [G, Q, 5]
        ((cx, cy, w, h) in frame units + confidence logit) against `targets` (G tensors
        [T_g, 4] in frame units); `inverse`: P6 area weights."""
        matcher = self.p6_matcher if inverse else self.matcher
        logits = preds[..., 4]
        labelled = [{"labels": torch.zeros_like(t[:, 0], dtype=torch.int64), "boxes": t}
                    for t in targets]
        indices = matcher(preds[..., 4:], preds[..., :4], labelled)
        iou_target = torch.zeros_like(logits)
        weight = torch.zeros_like(logits)
        positive = torch.zeros_like(logits, dtype=torch.bool)
        ignore = torch.zeros_like(logits, dtype=torch.bool)
        frames, rows, matched = [], [], []
        with torch.no_grad():
            for g, ((row, col), tgt) in enumerate(zip(indices, targets)):
                if len(tgt) == 0:
                    continue
                row, col = row.to(preds.device), col.to(preds.device)
                ious = box_iou(box_convert(preds[g, :, :4], "cxcywh", "xyxy"),
                               box_convert(tgt, "cxcywh", "xyxy"))
                ignore[g] = ious.max(1).values >= self.ignore_iou
                ignore[g, row] = False
                positive[g, row] = True
                iou_target[g, row] = ious[row, col]
                weight[g, row] = area_weights(tgt[col], self.area_weight, inverse)
                frames.append(torch.full_like(row, g))
                rows.append(row)
                matched.append(tgt[col])
        loss_ce = quality_focal_loss(logits, iou_target, positive, weight, ignore,
                                     self.beta).sum()
        if not frames:
            zero = preds[..., :4].sum() * 0.0
            return torch.stack([loss_ce, zero, zero])
        frame, row, tgt = torch.cat(frames), torch.cat(rows), torch.cat(matched)
        src = preds[frame, row, :4]
        quality, _ = dual_weights(logits[frame, row].detach().sigmoid(), iou_target[frame, row],
                                  self.gamma1, self.gamma2)
        scale = quality * weight[frame, row]
        loss_l1 = ((src - tgt).abs().sum(-1) * scale).sum()
        loss_giou = (giou_loss(box_convert(src, "cxcywh", "xyxy"),
                               box_convert(tgt, "cxcywh", "xyxy")) * scale).sum()
        return torch.stack([loss_ce, loss_l1, loss_giou])
