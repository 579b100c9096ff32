"""Build a detector from `MODEL.META_ARCHITECTURE`.

Every detector follows torchvision's detection API:
`model(images: list[Tensor[3, H, W] in [0, 1]], targets: list[dict] | None)` returns a dict of
scalar losses in training mode and, in eval mode, a list of dicts with `boxes` [K, 4] (xyxy, in
the coordinates of the input image), `scores` [K] and `labels` [K] (contiguous, 0-based).
Images are normalised and padded inside the model.
"""
from __future__ import annotations

import importlib

from torch import nn
from yacs.config import CfgNode

from fad.errors import ConfigError

# meta-architecture -> "module:function"; imported lazily so a family's deps load only when used
_BUILDERS = {
    "FCOS": "fad.modeling.fcos:build_fcos",
    "FasterRCNN": "fad.modeling.faster_rcnn:build_faster_rcnn",
    "DeformableDETR": "fad.modeling.detr.build:build_deformable_detr",
    "SparseDETR": "fad.modeling.detr.build:build_deformable_detr",
    "ASAG": "fad.modeling.asag.build:build_asag",
}


def build_detector(cfg: CfgNode, num_classes: int, **kwargs) -> nn.Module:
    """Instantiate the detector named by `cfg.MODEL.META_ARCHITECTURE` for `num_classes` classes."""
    name = cfg.MODEL.META_ARCHITECTURE
    if name not in _BUILDERS:
        raise ConfigError(
            f"unknown MODEL.META_ARCHITECTURE {name!r}; choose one of {sorted(_BUILDERS)}"
        )
    module_name, fn_name = _BUILDERS[name].split(":")
    builder = getattr(importlib.import_module(module_name), fn_name)
    return builder(cfg, num_classes, **kwargs)
