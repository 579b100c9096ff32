"""Backbone bodies (ResNet, SparseResNet) and the FPN on top of them."""
from __future__ import annotations

import importlib

from torch import nn
from yacs.config import CfgNode

from .fpn import BodyWithFPN

# MODEL.BACKBONE.NAME -> "module:function" returning (body, channels of c2..c5)
_BODIES = {
    "resnet": "fad.modeling.backbone.resnet:build_resnet_body",
    "sparse_resnet": "fad.modeling.backbone.sparse_resnet:build_sparse_resnet_body",
}


def build_backbone_body(cfg: CfgNode) -> tuple[nn.Module, dict[str, int]]:
    """The body named by `MODEL.BACKBONE.NAME`; its forward returns OrderedDict c2..c5."""
    name = cfg.MODEL.BACKBONE.NAME
    if name not in _BODIES:
        raise ValueError(f"unknown MODEL.BACKBONE.NAME {name!r}; choose one of {sorted(_BODIES)}")
    module_name, fn_name = _BODIES[name].split(":")
    return getattr(importlib.import_module(module_name), fn_name)(cfg)


def build_backbone(cfg: CfgNode) -> BodyWithFPN:
    """Body + FPN with P3-P7 of width `MODEL.FPN.OUT_CHANNELS` (has `.out_channels`)."""
    body, channels = build_backbone_body(cfg)
    return BodyWithFPN(body, channels, cfg.MODEL.FPN.OUT_CHANNELS, cfg.MODEL.FPN.USE_P5_FOR_P6)


__all__ = ["build_backbone", "build_backbone_body", "BodyWithFPN"]
