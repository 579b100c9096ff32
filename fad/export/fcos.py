"""FCOS (plain and FAD-searched heads, any backbone) in the export contract of `fad.export.base`.

The backbone, FPN and head are the trained model's own modules; only the post-processing of
`fad.modeling.fcos.model.FCOS.postprocess` is rewritten with static shapes:

- per level, the score threshold is a mask (scores of locations at or below it become -1)
  instead of `nonzero`, and the top-k is always TOPK_CANDIDATES wide (`topk_padded`);
- class-aware NMS over the whole batch is one `torchvision.ops.nms` call on boxes shifted apart
  per (image, class) - the coordinate trick of `batched_nms` - which the ONNX exporter writes as
  one NonMaxSuppression node; a below-threshold box has a lower score than every valid one, so
  it never suppresses one;
- the kept detections are ranked by score and padded to DETECTIONS_PER_IMG (`pad_detections`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import nms
from yacs.config import CfgNode

from fad.modeling.fcos.model import FCOS
from fad.modeling.fcos.targets import STRIDES, make_locations

from .base import ExportError, ExportModule, gather_rows, pad_detections, topk_padded


def clip_boxes(boxes: Tensor, height: int, width: int) -> Tensor:
    """`boxes` [..., 4] xyxy clamped into [0, width] x [0, height]."""
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], -1)


def batched_class_nms(boxes: Tensor, scores: Tensor, labels: Tensor, num_classes: int,
                      iou_threshold: float) -> Tensor:
    """Greedy NMS within each (image, class): `boxes` [N, M, 4], `scores` [N, M], `labels`
    [N, M] -> kept mask [N, M] bool. One `nms` over the batch, boxes shifted by their group."""
    n, m = scores.shape
    group = torch.arange(n, device=boxes.device)[:, None] * num_classes + labels
    shift = (group.to(boxes.dtype) * (boxes.max() + 1))[..., None]
    keep = nms((boxes + shift).reshape(-1, 4), scores.reshape(-1), iou_threshold)
    mask = torch.zeros(n * m, dtype=torch.bool, device=boxes.device)
    return mask.index_fill(0, keep, True).reshape(n, m)


class FCOSExport(ExportModule):
    """`forward(images [N, 3, H, W] 0-255)` -> (boxes [N, K, 4], scores [N, K], labels [N, K],
    num_detections [N]) of the wrapped FCOS, K = MODEL.FCOS.DETECTIONS_PER_IMG."""

    def __init__(self, model: FCOS, cfg: CfgNode, input_size: Sequence[int]):
        super().__init__(cfg, input_size, model.detections_per_img)
        self.backbone, self.head = model.backbone, model.head
        self.score_thresh, self.topk = model.score_thresh, model.topk
        self.nms_thresh = model.nms_thresh

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        height, width = images.shape[-2:]
        features = list(self.backbone(self.preprocess(images)).values())
        outputs = self.head(features)
        shapes = [tuple(f.shape[-2:]) for f in features]
        points, strides, _ = make_locations(shapes, STRIDES[: len(shapes)], images.device)
        cls = outputs["cls_logits"].float().sigmoid()
        ctr = outputs["bbox_ctrness"].float().sigmoid()
        reg = outputs["bbox_regression"].float() * strides[None, :, None]
        num_classes = cls.shape[2]
        boxes, scores, labels, valid = [], [], [], []
        lo = 0
        for h, w in shapes:
            hi = lo + h * w
            cls_l = cls[:, lo:hi]
            score = torch.sqrt(cls_l * ctr[:, lo:hi])
            above = (cls_l > self.score_thresh).flatten(1)
            top, index = topk_padded(torch.where(above, score.flatten(1), -1.0), self.topk)
            loc = torch.div(index, num_classes, rounding_mode="floor")
            p = gather_rows(points[lo:hi].expand(cls.shape[0], -1, -1), loc)
            r = gather_rows(reg[:, lo:hi], loc)
            boxes.append(torch.cat([p - r[..., :2], p + r[..., 2:]], -1))
            scores.append(top)
            labels.append(index % num_classes)
            valid.append(gather_rows(above, index) & (index < above.shape[1]))
            lo = hi
        b = clip_boxes(torch.cat(boxes, 1), height, width)
        s, lab, ok = torch.cat(scores, 1), torch.cat(labels, 1), torch.cat(valid, 1)
        keep = batched_class_nms(b, s, lab, num_classes, self.nms_thresh) & ok
        return pad_detections(b, s, lab, keep, self.detections_per_img)


def build_fcos_export(model: FCOS, cfg: CfgNode, input_size: Sequence[int]) -> FCOSExport:
    """The export module of a trained `FCOS` (plain or searched head)."""
    if not isinstance(model, FCOS):
        raise ExportError(f"MODEL.META_ARCHITECTURE FCOS expects an FCOS model, got "
                          f"{type(model).__name__}")
    return FCOSExport(model, cfg, input_size)
