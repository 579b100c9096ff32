"""Faster R-CNN + FPN (torchvision) on our backbone bodies, following the detector API.

The body named by MODEL.BACKBONE.NAME (ResNet or SparseResNet) gives C2-C5; torchvision's
FeaturePyramidNetwork makes P2-P6 (P6 by max-pooling P5), and torchvision's `FasterRCNN`
supplies the RPN (anchors 32-512, ratios 0.5/1/2), RoIAlign box head and post-processing.
Labels: our classes are 0-based and torchvision reserves 0 for background, so targets are
shifted by +1 on the way in and detections by -1 on the way out. Images arrive already resized
by the data pipeline, so the internal transform only normalises (INPUT.PIXEL_MEAN/STD) and pads
to INPUT.SIZE_DIVISIBILITY.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection._utils import BoxCoder, encode_boxes
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from yacs.config import CfgNode

from .backbone import build_backbone_body


class BodyWithFPNP2P6(nn.Module):
    """`forward(x [N,3,H,W])` -> OrderedDict "0".."3" (P2-P5) and "pool" (P6), each
    [N, out_channels, H/s, W/s] - the names torchvision's RPN and RoI pooler expect."""

    def __init__(self, body: nn.Module, channels: dict[str, int], out_channels: int):
        super().__init__()
        self.body = body
        self.in_features = ["c2", "c3", "c4", "c5"]
        self.fpn = FeaturePyramidNetwork([channels[k] for k in self.in_features], out_channels,
                                         extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        feats = self.body(x)
        pyramid = self.fpn(OrderedDict((k, feats[k]) for k in self.in_features))
        return OrderedDict(zip(["0", "1", "2", "3", "pool"], pyramid.values()))


class NormalizeOnlyTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform without its resize (our loaders already resized), and
    with its mean and std as buffers on the model's device (torchvision makes them from lists on
    every call: a host tensor and a copy per image)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # float64, as torchvision's Python floats: cast straight to the image's dtype per call
        self.register_buffer("mean", torch.tensor(self.image_mean, dtype=torch.float64),
                             persistent=False)
        self.register_buffer("std", torch.tensor(self.image_std, dtype=torch.float64),
                             persistent=False)

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None):
        return image, target

    def normalize(self, image: Tensor) -> Tensor:
        """(image [3, H, W] - mean) / std, per channel, in the image's dtype."""
        if not image.is_floating_point():
            raise TypeError(f"Faster R-CNN takes float images in [0, 1], got {image.dtype}")
        mean, std = self.mean.to(image.dtype), self.std.to(image.dtype)
        return (image - mean[:, None, None]) / std[:, None, None]


class DeviceBoxCoder(BoxCoder):
    """torchvision's `BoxCoder` whose weights tensor is made on the boxes' device once per dtype
    and device (torchvision makes it from a tuple on every `encode`: a host tensor and a copy)."""

    def __init__(self, coder: BoxCoder):
        super().__init__(coder.weights, coder.bbox_xform_clip)
        self._weights: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    def encode_single(self, reference_boxes: Tensor, proposals: Tensor) -> Tensor:
        """Regression targets [P, 4] of `proposals` [P, 4] towards `reference_boxes` [P, 4]."""
        key = (reference_boxes.dtype, reference_boxes.device)
        if key not in self._weights:
            self._weights[key] = torch.stack([torch.full((), w, dtype=key[0], device=key[1])
                                              for w in self.weights])
        return encode_boxes(reference_boxes, proposals, self._weights[key])


class FasterRCNNDetector(nn.Module):
    """torchvision Faster R-CNN behind the fad detector API (0-based labels)."""

    def __init__(self, model: FasterRCNN):
        super().__init__()
        self.model = model

    def forward(self, images: list[Tensor], targets: list[dict] | None = None):
        """Training: dict of scalar losses; eval: list of {boxes [K,4], scores [K], labels [K]}."""
        if self.training:
            if targets is None:
                raise ValueError("FasterRCNN: training needs targets; call model.eval() to infer")
            shifted = [{**t, "labels": t["labels"] + 1} for t in targets]
            return self.model(images, shifted)  # host sync: torchvision's RPN/ROI heads
        detections = self.model(images)  # host sync: torchvision's RPN/ROI heads
        return [{"boxes": d["boxes"], "scores": d["scores"], "labels": d["labels"] - 1}
                for d in detections]


def build_faster_rcnn(cfg: CfgNode, num_classes: int) -> nn.Module:
    """Faster R-CNN FPN for `num_classes` foreground classes from MODEL.* / INPUT.* keys."""
    if num_classes < 1:
        raise ValueError(f"Faster R-CNN needs at least one class, got num_classes={num_classes}")
    body, channels = build_backbone_body(cfg)
    backbone = BodyWithFPNP2P6(body, channels, cfg.MODEL.FPN.OUT_CHANNELS)
    rc = cfg.MODEL.FASTER_RCNN
    model = FasterRCNN(
        backbone, num_classes=num_classes + 1,
        rpn_pre_nms_top_n_train=rc.RPN_PRE_NMS_TOP_N_TRAIN,
        rpn_pre_nms_top_n_test=rc.RPN_PRE_NMS_TOP_N_TEST,
        rpn_post_nms_top_n_train=rc.RPN_POST_NMS_TOP_N_TRAIN,
        rpn_post_nms_top_n_test=rc.RPN_POST_NMS_TOP_N_TEST,
        rpn_nms_thresh=rc.RPN_NMS_THRESH,
        rpn_batch_size_per_image=rc.RPN_BATCH_SIZE_PER_IMAGE,
        box_batch_size_per_image=rc.ROI_BATCH_SIZE_PER_IMAGE,
        box_score_thresh=rc.SCORE_THRESH, box_nms_thresh=rc.NMS_THRESH,
        box_detections_per_img=rc.DETECTIONS_PER_IMG)
    model.transform = NormalizeOnlyTransform(
        min_size=cfg.INPUT.MIN_SIZE_TEST, max_size=cfg.INPUT.MAX_SIZE_TEST,
        image_mean=list(cfg.INPUT.PIXEL_MEAN), image_std=list(cfg.INPUT.PIXEL_STD),
        size_divisible=cfg.INPUT.SIZE_DIVISIBILITY)
    model.rpn.box_coder = DeviceBoxCoder(model.rpn.box_coder)
    model.roi_heads.box_coder = DeviceBoxCoder(model.roi_heads.box_coder)
    return FasterRCNNDetector(model)
