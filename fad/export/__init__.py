"""Export trained detectors to one self-contained graph (ONNX, torch.export `.pt2`).

`build_export_module(model, cfg, input_size)` wraps an eval-mode detector into the export
contract of `fad.export.base` (images 0-255 in; boxes, scores, labels, num_detections out).
Builders are looked up by MODEL.META_ARCHITECTURE in `EXPORTERS` (imported lazily, so a family's
code loads only when used); a builder is `build(model, cfg, input_size) -> ExportModule`.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

from torch import nn
from yacs.config import CfgNode

from fad.utils.registry import Registry

from .base import ExportError, ExportModule, normalize_and_pad, pad_detections, topk_padded

EXPORTERS = Registry("MODEL.META_ARCHITECTURE (export)", ExportError, {
    "FCOS": "fad.export.fcos:build_fcos_export",
    "FasterRCNN": "fad.export.faster_rcnn:build_faster_rcnn_export",
    "DeformableDETR": "fad.export.detr:build_detr_export",
    "SparseDETR": "fad.export.detr:build_detr_export",
    "ASAG": "fad.export.asag:build_asag_export",
})
# detectors that cannot be exported, and why (docs/export.md)
NOT_EXPORTABLE: dict[str, str] = {}


def masked_dense(model: nn.Module) -> nn.Module:
    """A copy of `model` with every SparseResNet body in its dense-masked execution (`model`
    itself when it has none): dense convolutions times the sampled masks are standard ops of any
    runtime, while the sparse execution gathers a data-dependent number of positions (no static
    shapes) through our custom kernels. Both give the same detections (to float rounding)."""
    from fad.modeling.backbone.sparse_resnet import SparseResNetBody

    if not any(isinstance(m, SparseResNetBody) for m in model.modules()):
        return model
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, SparseResNetBody):
            m.execution = "dense_masked"
            # its eval statistics (densities, GMACs for log_stats) read values on the host,
            # which a traced graph cannot; the copy keeps none
            m._accumulate_eval_stats = _no_statistics
    return model


def _no_statistics() -> None:
    """Stands in for a SparseResNet body's eval statistics in an export copy."""


def build_export_module(model: nn.Module, cfg: CfgNode, input_size: Sequence[int]
                        ) -> ExportModule:
    """The export module of `model` (built from `cfg`) for [N, 3, H, W] inputs, `input_size` =
    (H, W) the size used to trace it; in eval mode. A sparse backbone is exported in its
    dense-masked form (`masked_dense`)."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch in NOT_EXPORTABLE:
        raise ExportError(f"MODEL.META_ARCHITECTURE {arch} cannot be exported: "
                          f"{NOT_EXPORTABLE[arch]}")
    build = EXPORTERS.get(arch)
    module = build(masked_dense(model.eval()), cfg, tuple(input_size))
    return module.eval()


__all__ = ["EXPORTERS", "NOT_EXPORTABLE", "ExportError", "ExportModule", "build_export_module",
           "normalize_and_pad", "pad_detections", "topk_padded"]
