"""SAI Faster R-CNN export (SparseResNet run sparse by the eager model, exported dense-masked):
the static-shape RPN / RoI pooling / box post-processing equals torchvision's eager detections,
and so does ONNX Runtime on the exported graph (fixed batch 2, dynamic batch 1 and 2)."""
import os

import pytest
import torch
from conftest import REPO, randomized_detector
from test_export_fcos import _images, _onnx_run, assert_matches_eager

from fad.config import load_config
from fad.export import build_export_module
from fad.export.writer import write_export


def _faster_rcnn():
    cfg = load_config(os.path.join(REPO, "configs", "sai", "tiny_synthetic.yaml"),
                      ["MODEL.DEVICE", "cpu", "MODEL.FPN.OUT_CHANNELS", "16",
                       "MODEL.SPARSE.SAMPLING", "deterministic"])
    return cfg, randomized_detector(cfg, 3, std=0.1)


@pytest.mark.parametrize("shape", [(1, 96, 128), (2, 100, 150)])
def test_faster_rcnn_export_module_equals_the_eager_detections(shape):
    cfg, model = _faster_rcnn()
    module = build_export_module(model, cfg, shape[1:])
    images = _images(*shape, seed=5)
    with torch.no_grad():
        outputs = module(images)
    assert outputs[0].shape == (shape[0], cfg.MODEL.FASTER_RCNN.DETECTIONS_PER_IMG, 4)
    assert_matches_eager(model, images, outputs)


@pytest.mark.heavy
@pytest.mark.timeout(1500)  # exports take minutes on a loaded CPU
@pytest.mark.parametrize("dynamic", [False, True], ids=["fixed", "dynamic"])
def test_faster_rcnn_onnx_equals_eager(dynamic, tmp_path):
    onnx = pytest.importorskip("onnx")
    cfg, model = _faster_rcnn()
    path = tmp_path / "frcnn.onnx"
    size = (160, 192) if dynamic else (96, 128)
    write_export(build_export_module(model, cfg, size), str(path), "onnx", 2, dynamic, {})
    onnx.checker.check_model(str(path))
    cases = [(1, 160, 192), (2, 150, 230)] if dynamic else [(2, 96, 128)]
    for n, h, w in cases:
        images = _images(n, h, w, seed=n + h)
        assert_matches_eager(model, images, _onnx_run(path, images))
