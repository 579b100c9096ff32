"""Backbone bodies (ResNet, SparseResNet) and the FPN on top of them."""
from __future__ import annotations

from torch import nn
from yacs.config import CfgNode

from fad.errors import ConfigError
from fad.utils.registry import Registry

from .fpn import BodyWithFPN

# "module:function" returning (body, channels of c2..c5), imported when used
BACKBONES = Registry("MODEL.BACKBONE.NAME", ConfigError, {
    "resnet": "fad.modeling.backbone.resnet:build_resnet_body",
    "sparse_resnet": "fad.modeling.backbone.sparse_resnet:build_sparse_resnet_body",
})


def build_backbone_body(cfg: CfgNode) -> tuple[nn.Module, dict[str, int]]:
    """The body named by `MODEL.BACKBONE.NAME`; its forward returns OrderedDict c2..c5."""
    return BACKBONES.get(cfg.MODEL.BACKBONE.NAME)(cfg)


def build_backbone(cfg: CfgNode) -> BodyWithFPN:
    """Body + FPN with P3-P7 of width `MODEL.FPN.OUT_CHANNELS` (has `.out_channels`)."""
    body, channels = build_backbone_body(cfg)
    return BodyWithFPN(body, channels, cfg.MODEL.FPN.OUT_CHANNELS, cfg.MODEL.FPN.USE_P5_FOR_P6)


__all__ = ["BACKBONES", "build_backbone", "build_backbone_body", "BodyWithFPN"]
