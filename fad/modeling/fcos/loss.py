"""FCOS-imprv losses: sigmoid focal classification, centerness-weighted GIoU, centerness BCE."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from fad.utils.dist import all_reduce_mean

from .targets import centerness_target


def fcos_losses(outputs: dict[str, Tensor], cls_targets: Tensor, reg_targets: Tensor,
                point_strides: Tensor, alpha: float = 0.25, gamma: float = 2.0
                ) -> dict[str, Tensor]:
    """Losses of a batch.

    outputs: head dict (`cls_logits` [N, A, C], `bbox_regression` [N, A, 4] in strides,
    `bbox_ctrness` [N, A, 1]); cls_targets [N, A] (-1 = background); reg_targets [N, A, 4]
    in pixels; point_strides [A]. Normalisers are averaged over ranks as in FCOS.
    """
    cls_logits = outputs["cls_logits"].float()
    reg_pred = outputs["bbox_regression"].float()
    ctr_pred = outputs["bbox_ctrness"].float()[..., 0]
    pos = cls_targets >= 0
    num_pos = all_reduce_mean(pos.sum().float()).clamp(min=1.0)

    onehot = torch.zeros_like(cls_logits)
    onehot[pos, cls_targets[pos]] = 1.0
    loss_cls = sigmoid_focal_loss(cls_logits, onehot, alpha, gamma, reduction="sum") / num_pos

    strides = point_strides[None].expand_as(cls_targets)[pos][:, None]
    reg_t = reg_targets[pos] / strides
    reg_p = reg_pred[pos]
    ctr_t = centerness_target(reg_t)
    # every rank joins this all-reduce, also one without positives (else DDP ranks desync)
    ctr_sum = all_reduce_mean(ctr_t.sum()).clamp(min=1e-6)
    if reg_t.shape[0] == 0:
        zero = reg_pred.sum() * 0 + ctr_pred.sum() * 0
        return {"loss_cls": loss_cls, "loss_bbox": zero, "loss_ctr": zero}
    to_box = lambda r: torch.cat([-r[:, :2], r[:, 2:]], 1)  # noqa: E731 - ltrb -> box at origin
    giou = generalized_box_iou_loss(to_box(reg_p), to_box(reg_t), reduction="none")
    loss_bbox = (giou * ctr_t).sum() / ctr_sum
    loss_ctr = F.binary_cross_entropy_with_logits(ctr_pred[pos], ctr_t, reduction="sum") / num_pos
    return {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "loss_ctr": loss_ctr}
