"""Faster R-CNN (torchvision's, on our bodies: the SAI detectors) in the export contract.

The trained modules (backbone + FPN, RPN head and anchors, RoI box head and predictor, box
coders) are reused; the data-dependent steps of torchvision's eval path are rewritten with
static shapes, as in `fad/export/fcos.py`:

- RPN: per level the top RPN_PRE_NMS_TOP_N_TEST objectness logits (padded, `topk_padded`),
  decode, clip, small boxes and the score threshold as masks, NMS per (image, level) in one
  call, the best RPN_POST_NMS_TOP_N_TEST kept: P proposals per image with a validity mask;
- RoI pooling: every proposal is RoI-aligned on every level and the level of its size is
  selected (torchvision's `MultiScaleRoIAlign` pools each level's subset by `where`);
- boxes: decode per class, clip, drop the background, the score threshold and small boxes as
  masks, class-aware NMS, `pad_detections` (labels shifted to our 0-based classes).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.ops import roi_align
from torchvision.ops.poolers import LevelMapper
from yacs.config import CfgNode

from fad.modeling.faster_rcnn import FasterRCNNDetector

from .base import ExportError, ExportModule, gather_rows, pad_detections, topk_padded
from .fcos import batched_class_nms, clip_boxes

FPN_STRIDES = (4, 8, 16, 32)  # P2-P5, the RoI pooling levels of BodyWithFPNP2P6


def small(boxes: Tensor, min_size: float) -> Tensor:
    """[..., 4] xyxy -> bool [...]: width or height below `min_size` (remove_small_boxes)."""
    return (boxes[..., 2] - boxes[..., 0] < min_size) | (boxes[..., 3] - boxes[..., 1] < min_size)


class FasterRCNNExport(ExportModule):
    """`forward(images [N, 3, H, W] 0-255)` -> (boxes, scores, labels, num_detections) of the
    wrapped Faster R-CNN, K = MODEL.FASTER_RCNN.DETECTIONS_PER_IMG."""

    def __init__(self, detector: FasterRCNNDetector, cfg: CfgNode, input_size: Sequence[int]):
        m = detector.model
        super().__init__(cfg, input_size, m.roi_heads.detections_per_img)
        self.backbone, self.rpn, self.roi_heads = m.backbone, m.rpn, m.roi_heads
        pool = m.roi_heads.box_roi_pool
        self.pool_names = list(pool.featmap_names)
        if len(self.pool_names) != len(FPN_STRIDES):
            raise ExportError(f"Faster R-CNN export pools P2-P5, got levels {self.pool_names}")
        self.mapper = LevelMapper(int(math.log2(FPN_STRIDES[0])), int(math.log2(FPN_STRIDES[-1])),
                                  pool.canonical_scale, pool.canonical_level)

    def proposals(self, images: Tensor, features: list[Tensor], height: int, width: int
                  ) -> tuple[Tensor, Tensor]:
        """RPN -> proposals [N, P, 4] and their validity [N, P] (P = post-NMS top-n)."""
        rpn = self.rpn
        objectness, deltas = rpn.head(features)
        per_level = [o.shape[1] * o.shape[2] * o.shape[3] for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        n = images.shape[0]
        first = ImageList(images[:1], [(height, width)])
        anchors = rpn.anchor_generator(first, [f[:1] for f in features])[0]  # same every image
        boxes = rpn.box_coder.decode_single(deltas.reshape(n, -1, 4).flatten(0, 1),
                                            anchors.repeat(n, 1)).reshape(n, -1, 4)
        logits = objectness.reshape(n, -1)
        picked, levels, lo = [], [], 0
        for level, count in enumerate(per_level):
            _, index = topk_padded(logits[:, lo: lo + count], rpn.pre_nms_top_n(), -math.inf)
            picked.append(torch.where(index < count, index + lo, -1))
            levels.append(torch.full_like(index, level))
            lo += count
        index, level = torch.cat(picked, 1), torch.cat(levels, 1)
        ok = index >= 0
        index = index.clamp(min=0)
        prob = torch.sigmoid(gather_rows(logits, index))
        props = clip_boxes(gather_rows(boxes, index), height, width)
        ok = ok & ~small(props, rpn.min_size) & (prob >= rpn.score_thresh)
        score = torch.where(ok, prob, -1.0)
        keep = batched_class_nms(props, score, level, len(per_level), rpn.nms_thresh) & ok
        top, order = topk_padded(torch.where(keep, prob, -1.0), rpn.post_nms_top_n())
        return gather_rows(props, order), top >= 0

    def pool(self, features: dict[str, Tensor], props: Tensor) -> Tensor:
        """RoIAlign of `props` [N, P, 4] on the level of each one's size -> [N*P, C, 7, 7]."""
        pool = self.roi_heads.box_roi_pool
        n, p = props.shape[:2]
        flat = props.reshape(-1, 4)
        rois = torch.cat([torch.arange(n, device=props.device, dtype=props.dtype)
                          .repeat_interleave(p)[:, None], flat], 1)
        level = self.mapper([flat])
        out = 0
        for i, (name, stride) in enumerate(zip(self.pool_names, FPN_STRIDES)):
            pooled = roi_align(features[name], rois, pool.output_size, spatial_scale=1.0 / stride,
                               sampling_ratio=pool.sampling_ratio)
            out = out + pooled * (level == i).to(pooled.dtype)[:, None, None, None]
        return out

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        height, width = images.shape[-2:]
        x = self.preprocess(images)
        features = self.backbone(x)
        props, props_ok = self.proposals(x, list(features.values()), height, width)
        heads = self.roi_heads
        feats = heads.box_head(self.pool(features, props))
        class_logits, regression = heads.box_predictor(feats)
        n, p = props.shape[:2]
        num_classes = class_logits.shape[-1]
        boxes = heads.box_coder.decode_single(regression, props.reshape(-1, 4))
        boxes = clip_boxes(boxes.reshape(n, p, num_classes, 4)[:, :, 1:], height, width)
        scores = torch.softmax(class_logits, -1).reshape(n, p, num_classes)[:, :, 1:]
        labels = torch.arange(num_classes - 1, device=images.device).expand(n, p, -1)
        ok = props_ok[..., None] & (scores > heads.score_thresh) & ~small(boxes, 1e-2)
        boxes, scores = boxes.reshape(n, -1, 4), scores.reshape(n, -1)
        labels, ok = labels.reshape(n, -1), ok.reshape(n, -1)
        keep = batched_class_nms(boxes, torch.where(ok, scores, -1.0), labels, num_classes - 1,
                                 heads.nms_thresh) & ok
        return pad_detections(boxes, scores, labels, keep, self.detections_per_img)


def build_faster_rcnn_export(model: FasterRCNNDetector, cfg: CfgNode, input_size: Sequence[int]
                             ) -> FasterRCNNExport:
    """The export module of a trained Faster R-CNN (SAI detectors)."""
    if not isinstance(model, FasterRCNNDetector):
        raise ExportError(f"MODEL.META_ARCHITECTURE FasterRCNN expects a FasterRCNNDetector, got "
                          f"{type(model).__name__}")
    return FasterRCNNExport(model, cfg, input_size)
