"""Set criterion: Hungarian-matched focal, L1 and GIoU losses on every prediction set."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from fad.modeling.set_prediction import (
    HungarianMatcher,
    average_num_boxes,
    cxcywh_to_xyxy,
    giou_loss,
    matched_pairs,
)


class SetCriterion(nn.Module):
    """Losses of a DETR prediction dict against targets (normalised cxcywh boxes, 0-based labels).

    `outputs` holds `pred_logits` [N, Q, C] and `pred_boxes` [N, Q, 4] (sigmoid cxcywh) and
    optionally `aux_outputs` (one such dict per earlier decoder layer), `enc_outputs` (two-stage
    proposals; `binary` True trains class 0 as "object") and `enc_aux_outputs` (Sparse DETR
    encoder layers). Any set may carry `query_mask` [N, Q] bool: masked queries are neither
    matched nor penalised. Every loss is divided by the number of target boxes.

    Returns weighted losses: loss_ce, loss_bbox, loss_giou, with suffix `_{i}` for decoder layer
    i, `_enc` for the proposals and `_enc_{l}` for encoder layer l.
    """

    def __init__(self, num_classes: int, matcher: HungarianMatcher, weight_dict: dict[str, float],
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def set_losses(self, out: dict, targets: list[dict], num_boxes: float | Tensor
                   ) -> dict[str, Tensor]:
        """Unweighted loss_ce / loss_bbox / loss_giou of one prediction set."""
        logits, boxes = out["pred_logits"], out["pred_boxes"]
        mask = out.get("query_mask")
        if out.get("binary"):
            targets = [{"labels": torch.zeros_like(t["labels"]), "boxes": t["boxes"]}
                       for t in targets]
        indices = self.matcher(logits, boxes, targets, mask)
        batch_idx, query_idx, labels, tgt_boxes = matched_pairs(indices, targets)
        batch_idx, query_idx = batch_idx.to(logits.device), query_idx.to(logits.device)

        onehot = torch.zeros_like(logits)
        onehot[batch_idx, query_idx, labels] = 1.0
        loss_ce = sigmoid_focal_loss(logits, onehot, self.focal_alpha, self.focal_gamma, "none")
        if mask is not None:
            loss_ce = loss_ce * mask[..., None]
        matched = boxes[batch_idx, query_idx]
        loss_bbox = F.l1_loss(matched, tgt_boxes, reduction="sum")
        loss_giou = giou_loss(cxcywh_to_xyxy(matched), cxcywh_to_xyxy(tgt_boxes)).sum()
        return {"loss_ce": loss_ce.sum() / num_boxes, "loss_bbox": loss_bbox / num_boxes,
                "loss_giou": loss_giou / num_boxes}

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        num_boxes = average_num_boxes(targets, outputs["pred_logits"].device)
        sets = [("", outputs)]
        sets += [(f"_{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs", []))]
        if "enc_outputs" in outputs:
            sets.append(("_enc", outputs["enc_outputs"]))
        sets += [(f"_enc_{i}", aux) for i, aux in enumerate(outputs.get("enc_aux_outputs", []))]
        losses = {}
        for suffix, out in sets:
            for name, value in self.set_losses(out, targets, num_boxes).items():
                losses[name + suffix] = value * self.weight_dict[name]
        return losses
