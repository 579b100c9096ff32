"""ASAG is refused by the exporter in one line (fad/export/asag.py, docs/export.md), and the
reason holds: torch.export stops at the anchor generator's data-dependent control flow."""
from __future__ import annotations

import os

import pytest
import torch
from conftest import REPO
from torch import Tensor, nn

from fad.config import load_config
from fad.export import ExportError, build_export_module
from fad.modeling import build_detector


def _asag():
    cfg = load_config(os.path.join(REPO, "configs/asag/tiny_synthetic.yaml"),
                      ["MODEL.DEVICE", "cpu", "MODEL.ASAG.FAST_INFERENCE", "True"])
    torch.manual_seed(0)
    return cfg, build_detector(cfg, 2).eval()


def test_exporter_refuses_asag_in_one_line():
    cfg, model = _asag()
    with pytest.raises(ExportError) as err:
        build_export_module(model, cfg, (160, 160))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("MODEL.META_ARCHITECTURE ASAG cannot be exported: its adaptive "
                              "anchor generator emits a data-dependent number of anchors")
    assert message.endswith("(docs/export.md)")


class _FastPath(nn.Module):
    """ASAG's eager fast inference path on one 0-255 image."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        det = self.model([images[0] / 255])[0]
        return det["boxes"], det["scores"], det["labels"]


def test_fast_path_has_data_dependent_control_flow():
    """What the docs say: tracing stops at a branch on how many anchors were selected."""
    _, model = _asag()
    images = torch.rand(1, 3, 160, 160, generator=torch.Generator().manual_seed(0)) * 255
    with pytest.raises(Exception, match="data-dependent") as err:
        torch.export.export(_FastPath(model), (images,), strict=False)
    frames = [os.path.basename(str(f.path)) for f in err.traceback
              if "fad/modeling/asag" in str(f.path)]
    assert "anchor_generator.py" in frames
