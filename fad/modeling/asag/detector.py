"""`ASAG`: images in, losses (training) or detections (eval) out (docs/asag.md)."""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from yacs.config import CfgNode

from fad.modeling.hooks import ModelHooks
from fad.modeling.image_batch import batch_images
from fad.modeling.set_prediction import normalized_targets, values_like

from .anchor_generator import AdaptiveAnchorGenerator
from .anchor_loss import AnchorLoss
from .blocks import padding_attention_mask
from .criterion import AsagCriterion
from .denoising import dn_noise_scale, prepare_denoising
from .heads import DecoderHeads
from .postprocess import postprocess
from .relation import RelationBlock

BODY_OUTPUTS = ("c2", "c3", "c4", "c5")  # strides 4, 8, 16, 32


def _autocast_off(device: torch.device) -> AbstractContextManager:
    """Autocast disabled on `device`; nothing to disable where autocast does not exist (meta)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return nullcontext()


class AsagBackbone(nn.Module):
    """ResNet body + torchvision's plain FPN on C2-C5.

    `forward(images [B, 3, H, W])` -> [P2, P3, P4, P5], each [B, dim, H / s, W / s] for strides
    4, 8, 16, 32. The reference's frozen BN statistics with trainable affine parameters are the
    body's MODEL.BACKBONE.NORM BN + NORM_EVAL True.
    """

    def __init__(self, body: nn.Module, channels: dict[str, int], dim: int = 256):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork([channels[k] for k in BODY_OUTPUTS], dim)

    def forward(self, images: Tensor) -> list[Tensor]:
        feats = self.body(images)
        return list(self.fpn({k: feats[k] for k in BODY_OUTPUTS}).values())


class ASAG(nn.Module, ModelHooks):
    """ASAG-A / ASAG-S (optionally with denoising queries).

    `forward(images: list[Tensor[3, H, W] in [0, 1]], targets: list[dict] | None)`: targets hold
    `boxes` [K, 4] xyxy pixels and `labels` [K] int64 0-based. Training returns the weighted
    losses (anchor generator, proposals, every decoder head, DN); eval returns per image
    `boxes` [K, 4] xyxy input pixels, `scores` [K], `labels` [K] of the used head.

    Backbone + FPN may run under the engine's autocast; everything after runs in fp32 (as the
    reference). The anchor generator's epoch (ground-truth patches at epoch 0) and the DN noise
    scale come from `set_progress`, which the trainer calls before every step (0 until then).
    """

    def __init__(self, backbone: AsagBackbone, anchor_generator: AdaptiveAnchorGenerator,
                 relation: RelationBlock, decoder: DecoderHeads, criterion: AsagCriterion,
                 anchor_loss: AnchorLoss, pixel_mean: tuple, pixel_std: tuple,
                 size_divisibility: int = 32, num_detections: int = 100, nms_thresh: float = 0.0,
                 fast_inference: bool = False, num_dn: int = 0,
                 fixed_noise_scale: float | None = None):
        super().__init__()
        self.backbone = backbone
        self.anchor_generator = anchor_generator
        self.relation = relation
        self.decoder = decoder
        self.criterion = criterion
        self.anchor_loss = anchor_loss
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std), persistent=False)
        self.size_divisibility = size_divisibility
        self.num_detections = num_detections
        self.nms_thresh = nms_thresh
        self.fast_inference = fast_inference
        self.num_dn = num_dn
        self.fixed_noise_scale = fixed_noise_scale
        self.epoch = 0
        # P4P6 / P5P6 stop probing in training too: the unprobed levels' layers idle
        self.ddp_find_unused_parameters = anchor_generator.num_probes < 2

    def set_progress(self, iteration: int, epoch: int) -> None:
        """The trainer's epoch of the coming step (ground-truth patches, DN noise)."""
        self.epoch = epoch

    def forward(self, images: list[Tensor], targets: list[dict] | None = None):
        if self.training and targets is None:
            raise ValueError("ASAG: training mode needs targets; call model.eval() for inference")
        batch, sizes, _ = batch_images(images, self.pixel_mean, self.pixel_std,
                                       self.size_divisibility)
        features = self.backbone(batch)
        with _autocast_off(batch.device):
            features = [f.float() for f in features]
            image_hw = values_like([v for hw in sizes for v in hw], features[0]).view(-1, 2)
            if not self.training:
                return self._detect(features, sizes, image_hw)
            norm_targets = normalized_targets(targets, sizes, self.criterion.num_classes,
                                              "ASAG targets")
            return self._losses(features, sizes, image_hw, norm_targets)

    def _detect(self, features: list[Tensor], sizes: list[tuple[int, int]], image_hw: Tensor
                ) -> list[dict[str, Tensor]]:
        """Anchors -> proposals -> the used head -> top-k detections."""
        anchors = self.anchor_generator(features[1:], sizes, fast_inference=self.fast_inference)
        mask = padding_attention_mask(anchors.valid)
        proposals = self.relation(features, anchors.boxes, image_hw, mask)
        out = self.decoder(features, proposals, image_hw, mask)[self.decoder.used_index]
        return postprocess(out["logits"], out["boxes"], anchors.valid, sizes,
                           self.num_detections, self.nms_thresh)

    def _losses(self, features: list[Tensor], sizes: list[tuple[int, int]], image_hw: Tensor,
                targets: list[dict]) -> dict[str, Tensor]:
        """Anchor losses, then proposal / head (/ DN) losses; targets in cxcywh fractions."""
        anchors = self.anchor_generator(features[1:], sizes, targets, self.epoch)
        losses = self.anchor_loss(anchors.records, targets)
        boxes, mask = anchors.boxes, padding_attention_mask(anchors.valid)
        outputs: dict = {"valid": anchors.valid}
        if self.num_dn:
            scale = dn_noise_scale(self.epoch, self.fixed_noise_scale)
            dn = prepare_denoising(targets, boxes, anchors.valid, image_hw, self.num_dn, scale)
            boxes, mask = dn.boxes, dn.attn_mask
            outputs.update(num_dn=dn.num_dn, dn_targets=dn.targets)
        outputs["rpn"] = self.relation(features, boxes, image_hw, mask)
        outputs["heads"] = self.decoder(features, outputs["rpn"], image_hw, mask)
        losses.update(self.criterion(outputs, targets))
        return losses

    def optimizer_param_groups(self, cfg: CfgNode) -> list[dict]:
        """AdamW groups: the backbone body at MODEL.ASAG.LR_BACKBONE, the rest (FPN included) at
        SOLVER.BASE_LR, all with SOLVER.WEIGHT_DECAY; frozen parameters are left out."""
        s = cfg.SOLVER
        body, rest = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (body if name.startswith("backbone.body.") else rest).append(p)
        groups = [(rest, s.BASE_LR), (body, cfg.MODEL.ASAG.LR_BACKBONE)]
        return [{"params": ps, "lr": lr, "weight_decay": s.WEIGHT_DECAY} for ps, lr in groups if ps]
