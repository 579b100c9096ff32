"""FCOS-imprv losses: sigmoid focal classification, centerness-weighted GIoU, centerness BCE."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

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

    classes = torch.arange(cls_logits.shape[-1], device=cls_targets.device)
    onehot = (cls_targets[..., None] == classes).to(cls_logits.dtype)
    loss_cls = sigmoid_focal_loss(cls_logits, onehot, alpha, gamma, reduction="sum") / num_pos

    index = torch.nonzero(pos.flatten())[:, 0]  # host sync: FCOS's positives (from the targets)
    strides = point_strides[index % point_strides.shape[0], None]
    reg_t = reg_targets.flatten(0, 1)[index] / strides
    reg_p = reg_pred.flatten(0, 1)[index]
    ctr_t = centerness_target(reg_t)
    # every rank joins this all-reduce, also one without positives (else DDP ranks desync)
    ctr_sum = all_reduce_mean(ctr_t.sum()).clamp(min=1e-6)
    to_box = lambda r: torch.cat([-r[:, :2], r[:, 2:]], 1)  # noqa: E731 - ltrb -> box at origin
    loss_bbox = (giou_loss(to_box(reg_p), to_box(reg_t)) * ctr_t).sum() / ctr_sum
    ctr_p = ctr_pred.flatten()[index]
    loss_ctr = F.binary_cross_entropy_with_logits(ctr_p, ctr_t, reduction="sum") / num_pos
    return {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "loss_ctr": loss_ctr}


def giou_loss(boxes: Tensor, target: Tensor, eps: float = 1e-7) -> Tensor:
    """1 - GIoU of xyxy boxes [P, 4] and target [P, 4], pairwise by row -> [P].

    torchvision's `generalized_box_iou_loss` (reduction "none"), same values and gradients, with
    the intersection selected by `torch.where` rather than a boolean mask, whose indexing is a
    host sync on CUDA (and empty inputs give an empty loss).
    """
    x1, y1, x2, y2 = boxes.unbind(-1)
    x1g, y1g, x2g, y2g = target.unbind(-1)
    xk1, yk1 = torch.max(x1, x1g), torch.max(y1, y1g)
    xk2, yk2 = torch.min(x2, x2g), torch.min(y2, y2g)
    inter = torch.where((yk2 > yk1) & (xk2 > xk1), (xk2 - xk1) * (yk2 - yk1), 0.0)
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
    iou = inter / (union + eps)
    area_c = (torch.max(x2, x2g) - torch.min(x1, x1g)) * (torch.max(y2, y2g) - torch.min(y1, y1g))
    return 1 - (iou - ((area_c - union) / (area_c + eps)))
