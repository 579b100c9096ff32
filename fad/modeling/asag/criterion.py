"""Losses of ASAG's proposals (RelationBlock) and decoder heads: Hungarian matching with area
weights, dual-weighting focal loss, weighted L1 + GIoU, and the denoising losses."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou

from fad.modeling.set_prediction import (
    average_num_boxes,
    cxcywh_to_xyxy,
    giou_loss,
    matched_pairs,
)

from .boxes import area_weights
from .matcher import AreaWeightedMatcher

DEFAULT_WEIGHTS = {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0}


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@torch.no_grad()
def dual_weights(prob: Tensor, iou: Tensor, gamma1: float = 0.4, gamma2: float = 0.6
                 ) -> tuple[Tensor, Tensor]:
    """Positive and negative weights [M] of matched pairs from the class probability [M] of the
    target class and the box IoU [M].

    w_pos = sigmoid(4.5 * (p^g1 * IoU^g2 - 1/3)) / sigmoid(3), in [0.19, 1];
    w_neg = sigmoid(4.5 * (g(IoU^g2) * p^g1 - 1/3)) / sigmoid(3) - sigmoid(-1.5) / sigmoid(3),
    g(x) = (1 - x^2) / 0.75 for x >= 0.5 else 1, in [0, 0.81].
    """
    norm = 1.0 / _sigmoid(3.0)
    p, x = prob.pow(gamma1), iou.pow(gamma2)
    w_pos = torch.sigmoid(4.5 * (p * x - 1 / 3)) * norm
    g = torch.where(x >= 0.5, (1 - x * x) / 0.75, torch.ones_like(x))
    w_neg = torch.sigmoid(4.5 * (g * p - 1 / 3)) * norm - _sigmoid(-1.5) * norm
    return w_pos, w_neg


def dw_focal_loss(logits: Tensor, matched: tuple[Tensor, Tensor, Tensor], w_pos: Tensor,
                  w_neg: Tensor, w_area: Tensor, beta: float = 2.0) -> Tensor:
    """Dual-weighting focal loss per entry, [B, Q, C].

    Every entry: BCE(logit, 0) * sigmoid(logit)^beta (no alpha). The matched entries
    `matched` = (image [M], query [M], class [M]) get instead
    (BCE(logit, 1) * w_pos + BCE(logit, 0) * w_neg) * w_area.
    """
    loss = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits),
                                              reduction="none") * logits.sigmoid().pow(beta)
    x = logits[matched]
    pos = (F.binary_cross_entropy_with_logits(x, torch.ones_like(x), reduction="none") * w_pos
           + F.binary_cross_entropy_with_logits(x, torch.zeros_like(x), reduction="none")
           * w_neg)
    return loss.index_put(matched, pos * w_area)


class AsagCriterion(nn.Module):
    """Losses of the RelationBlock proposals and of every decoder head that ran.

    Each set is matched on its own (area-weighted Hungarian matching over valid queries only),
    then: dual-weighting focal loss (masked to valid queries), L1 and GIoU of the matched boxes
    weighted by w_pos * area weight, all summed and divided by the global target count.
    Denoising queries (the first `num_dn` of every set) are matched to their own targets by
    position, with the class loss masked to the slots that hold a target, and normalised by
    num_dn * batch.

    `forward(outputs, targets)`: targets are dicts with `labels` [T] (0-based) and `boxes`
    [T, 4] cxcywh fractions of the unpadded image; outputs holds `rpn` and `heads` ({head index:
    set}), each set with `logits` [B, N + Q, C] and `boxes` [B, N + Q, 4] (cxcywh fractions),
    `valid` [B, Q] bool, and for denoising `num_dn` N and `dn_targets` (a list of target
    dicts). Returns weighted losses `loss_{ce,bbox,giou}_{rpn,h<k>}` and the `dn_` ones.
    """

    def __init__(self, num_classes: int, matcher: AreaWeightedMatcher,
                 weight_dict: dict[str, float] | None = None, area_weight: float = 4.0,
                 gamma1: float = 0.4, gamma2: float = 0.6):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(DEFAULT_WEIGHTS if weight_dict is None else weight_dict)
        self.area_weight = area_weight
        self.gamma1 = gamma1
        self.gamma2 = gamma2

    def set_losses(self, logits: Tensor, boxes: Tensor, targets: list[dict],
                   indices: list[tuple[Tensor, Tensor]], valid: Tensor, num_boxes: float
                   ) -> dict[str, Tensor]:
        """Unweighted loss_ce / loss_bbox / loss_giou of one set ([B, Q, C], [B, Q, 4]) under
        the matching `indices`; `valid` [B, Q] masks the class loss."""
        device = logits.device
        image, query, labels, tgt_boxes = matched_pairs(indices, targets)
        image, query, labels = image.to(device), query.to(device), labels.to(device)
        tgt_boxes = tgt_boxes.to(boxes)
        matched = boxes[image, query]
        src_xyxy, tgt_xyxy = cxcywh_to_xyxy(matched), cxcywh_to_xyxy(tgt_boxes)
        with torch.no_grad():
            iou = box_iou(src_xyxy, tgt_xyxy).diagonal()
            prob = logits[image, query, labels].sigmoid()
            w_pos, w_neg = dual_weights(prob, iou, self.gamma1, self.gamma2)
            w_area = area_weights(tgt_boxes, self.area_weight)
        loss_ce = dw_focal_loss(logits, (image, query, labels), w_pos, w_neg, w_area)
        loss_ce = (loss_ce * valid[..., None]).sum()
        weight = w_pos * w_area
        loss_bbox = (F.l1_loss(matched, tgt_boxes, reduction="none") * weight[:, None]).sum()
        loss_giou = (giou_loss(src_xyxy, tgt_xyxy) * weight).sum()
        return {"loss_ce": loss_ce / num_boxes, "loss_bbox": loss_bbox / num_boxes,
                "loss_giou": loss_giou / num_boxes}

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        num_dn = outputs.get("num_dn", 0)
        valid = outputs["valid"]
        sets = [("rpn", outputs["rpn"])]
        sets += [(f"h{k}", out) for k, out in sorted(outputs["heads"].items())]
        num_boxes = average_num_boxes(targets, valid.device)
        losses = {}
        for name, out in sets:
            logits, boxes = out["logits"][:, num_dn:], out["boxes"][:, num_dn:]
            indices = self.matcher(logits, boxes, targets, valid)
            for key, value in self.set_losses(logits, boxes, targets, indices, valid,
                                              num_boxes).items():
                losses[f"{key}_{name}"] = value * self.weight_dict[key]
        if num_dn:
            losses.update(self._dn_losses(sets, outputs["dn_targets"], num_dn))
        return losses

    def _dn_losses(self, sets: list[tuple[str, dict]], dn_targets: list[dict], num_dn: int
                   ) -> dict[str, Tensor]:
        """Denoising losses: slot i of image b is matched to dn_targets[b] entry i."""
        device = sets[0][1]["logits"].device
        indices = [(torch.arange(len(t["labels"]), device=device),
                    torch.arange(len(t["labels"]), device=device)) for t in dn_targets]
        slots = torch.arange(num_dn, device=device)
        valid = torch.stack([slots < len(t["labels"]) for t in dn_targets])
        normaliser = float(num_dn * len(dn_targets))
        losses = {}
        for name, out in sets:
            logits, boxes = out["logits"][:, :num_dn], out["boxes"][:, :num_dn]
            for key, value in self.set_losses(logits, boxes, dn_targets, indices, valid,
                                              normaliser).items():
                losses[f"dn_{key}_{name}"] = value * self.weight_dict[key]
        return losses
