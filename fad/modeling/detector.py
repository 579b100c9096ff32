"""Build a detector from `MODEL.META_ARCHITECTURE`.

Every detector follows torchvision's detection API:
`model(images: list[Tensor[3, H, W] in [0, 1]], targets: list[dict] | None)` returns a dict of
scalar losses in training mode and, in eval mode, a list of dicts with `boxes` [K, 4] (xyxy, in
the coordinates of the input image), `scores` [K] and `labels` [K] (contiguous, 0-based).
Images are normalised and padded inside the model.
"""
from __future__ import annotations

from torch import nn
from yacs.config import CfgNode

from fad.errors import ConfigError
from fad.utils.registry import Registry

# imported lazily so a family's deps load only when used
DETECTORS = Registry("MODEL.META_ARCHITECTURE", ConfigError, {
    "FCOS": "fad.modeling.fcos:build_fcos",
    "FasterRCNN": "fad.modeling.faster_rcnn:build_faster_rcnn",
    "DeformableDETR": "fad.modeling.detr.build:build_deformable_detr",
    "SparseDETR": "fad.modeling.detr.build:build_deformable_detr",
    "ASAG": "fad.modeling.asag.build:build_asag",
})


def build_detector(cfg: CfgNode, num_classes: int, **kwargs) -> nn.Module:
    """Instantiate the detector named by `cfg.MODEL.META_ARCHITECTURE` for `num_classes` classes."""
    return DETECTORS.get(cfg.MODEL.META_ARCHITECTURE)(cfg, num_classes, **kwargs)
