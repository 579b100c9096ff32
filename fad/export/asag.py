"""ASAG cannot be exported (docs/export.md, "ASAG"): its adaptive anchor generator makes a
data-dependent number of anchors and probe patches per image, even on the fast inference path.

Every stage keeps the anchors whose confidence passes a threshold (`nonzero`), tops up to a
minimum or cuts to a maximum depending on how many passed, opens one 15x15 patch per uncertain
small anchor (a data-dependent count of patches cropped at data-dependent corners), and the
relation block and decoder then attend over exactly those anchors. Neither ONNX with static
shapes nor torch.export with dynamic ones can trace that without a rewrite of the generator into
fixed-size masked stages, which would no longer be the trained model's computation.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from yacs.config import CfgNode

from .base import ExportError

REASON = ("MODEL.META_ARCHITECTURE ASAG cannot be exported: its adaptive anchor generator emits a "
          "data-dependent number of anchors and probe patches per image (thresholds, nonzero, "
          "per-image patch crops), which ONNX and torch.export cannot trace (docs/export.md)")


def build_asag_export(model: nn.Module, cfg: CfgNode, input_size: Sequence[int]) -> nn.Module:
    """Always raises the one-line ExportError `REASON`."""
    raise ExportError(REASON)
