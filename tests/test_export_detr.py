"""Deformable DETR (+ box refinement, + two-stage) and Sparse DETR exported to ONNX: ONNX
Runtime's detections equal the eager model's (boxes within 1e-3 px, scores within 1e-4, same
labels and order) at batch 1 and 2, fixed (padded inside) and dynamic sizes; the file passes
onnx.checker (in `export_onnx`)."""
from __future__ import annotations

import os

import pytest
import torch
from conftest import REPO, painted_scene, train_steps

from fad.config import load_config
from fad.engine.solver import build_optimizer
from fad.export import build_export_module
from fad.export.detr import DeformableDETRExport
from fad.export.writer import dynamic_shapes, example_input, export_onnx
from fad.modeling import build_detector

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

CONFIGS = {
    "refine_two_stage": ("configs/deformable_detr/tiny_synthetic.yaml", []),
    "single_stage": ("configs/deformable_detr/tiny_synthetic.yaml",
                     ["MODEL.DETR.WITH_BOX_REFINE", "False", "MODEL.DETR.TWO_STAGE", "False"]),
    "sparse": ("configs/sparse_detr/tiny_synthetic.yaml", []),
}


def _detector(variant: str, trained: bool = False):
    """The tiny detector of `variant` (random weights, or 3 AdamW steps on painted scenes)."""
    path, opts = CONFIGS[variant]
    cfg = load_config(os.path.join(REPO, path),
                      ["MODEL.DEVICE", "cpu", "MODEL.DETR.NUM_QUERIES", "20", *opts])
    torch.manual_seed(0)
    model = build_detector(cfg, 2)
    if trained:
        a = painted_scene([(8, 10, 30, 40), (40, 36, 60, 58)], [0, 1], 96, 96)
        b = painted_scene([(20, 4, 56, 28)], [1], 96, 128)
        model.train()
        train_steps(model, [a[0], b[0]], [a[1], b[1]], build_optimizer(cfg, model), 3, 0.1)
    return cfg, model.eval()


def _images(batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((batch, 3, height, width), generator=gen) * 255


def _assert_same_detections(session, model, images: torch.Tensor) -> None:
    boxes, scores, labels, count = (torch.from_numpy(x) for x in
                                    session.run(None, {"images": images.numpy()}))
    with torch.no_grad():
        eager = model([img / 255 for img in images])
    for i, det in enumerate(eager):
        k = len(det["scores"])
        assert int(count[i]) == k
        assert torch.equal(labels[i, :k], det["labels"])
        torch.testing.assert_close(scores[i, :k], det["scores"], rtol=0, atol=1e-4)
        torch.testing.assert_close(boxes[i, :k], det["boxes"], rtol=0, atol=1e-3)
        assert not scores[i, k:].any() and not boxes[i, k:].any()


def _export(model, cfg, size, path, batch: int, dynamic: bool):
    module = build_export_module(model, cfg, size)
    assert isinstance(module, DeformableDETRExport)
    export_onnx(module, str(path), example_input(module, batch, dynamic), dynamic, {})
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.slow
@pytest.mark.parametrize("variant,trained,batch", [
    pytest.param("refine_two_stage", False, 1, marks=pytest.mark.heavy),
    ("refine_two_stage", True, 2),
    pytest.param("single_stage", False, 2, marks=pytest.mark.heavy),
    pytest.param("sparse", True, 1, marks=pytest.mark.heavy), ("sparse", False, 2)])
def test_fixed_size_matches_eager(tmp_path, variant, trained, batch):
    """Fixed 150x210 (padded to 160x224 inside, so the padding mask matters)."""
    cfg, model = _detector(variant, trained)
    session = _export(model, cfg, (150, 210), tmp_path / "detr.onnx", batch, dynamic=False)
    _assert_same_detections(session, model, _images(batch, 150, 210, seed=1))
    model_proto = onnx.load(str(tmp_path / "detr.onnx"))
    ops = {node.op_type for node in model_proto.graph.node}
    assert "GridSample" in ops and all(node.domain == "" for node in model_proto.graph.node)


@pytest.mark.heavy
@pytest.mark.parametrize("variant", ["refine_two_stage", "sparse"])
def test_dynamic_size_matches_eager(tmp_path, variant):
    """One dynamic file runs batch 1 and 2 at sizes other than the traced one (multiples of
    the size divisibility; padded sizes: `test_dynamic_padded_size_matches_eager`)."""
    cfg, model = _detector(variant, trained=True)
    session = _export(model, cfg, (160, 224), tmp_path / "detr.onnx", 1, dynamic=True)
    for seed, (batch, h, w) in enumerate([(1, 160, 224), (2, 192, 160), (2, 256, 288)]):
        _assert_same_detections(session, model, _images(batch, h, w, seed))


@pytest.mark.heavy
def test_dynamic_padded_size_matches_eager(tmp_path):
    """170x200 is padded to 192x224 inside the dynamic graph traced at another size."""
    cfg, model = _detector("refine_two_stage", trained=True)
    session = _export(model, cfg, (160, 224), tmp_path / "detr.onnx", 1, dynamic=True)
    _assert_same_detections(session, model, _images(2, 170, 200, seed=1))


class _Preprocess(torch.nn.Module):
    """The export module's normalisation and padding alone: [N, 3, H, W] -> [N, 3, H', W']."""

    def __init__(self, module: DeformableDETRExport):
        super().__init__()
        self.module = module

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.module.preprocess(images)


def test_dynamic_onnx_pads_up_to_the_size_divisibility():
    """The padded size d * ceil(size / d) stays a ceil in a dynamic ONNX graph (torch.onnx
    writes a symbolic floor division as ONNX Div, which truncates: -(-200 // 32) gave 6)."""
    cfg, model = _detector("single_stage")
    module = _Preprocess(build_export_module(model, cfg, (160, 224)))
    with torch.no_grad():
        program = torch.onnx.export(module, (_images(2, 256, 256, seed=0),), dynamo=True,
                                    input_names=["images"], dynamic_shapes=dynamic_shapes())
    session = ort.InferenceSession(program.model_proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    for h, w, padded in [(170, 200, (192, 224)), (192, 160, (192, 160)), (129, 257, (160, 288))]:
        images = _images(1, h, w, seed=h)
        (out,) = session.run(None, {"images": images.numpy()})
        with torch.no_grad():
            eager = module(images)
        assert eager.shape[-2:] == padded
        torch.testing.assert_close(torch.from_numpy(out), eager, rtol=0, atol=1e-5)


def test_export_module_matches_eager_without_onnx():
    """The export module alone (no ONNX): same detections as the eager model, padded input."""
    cfg, model = _detector("sparse")
    module = build_export_module(model, cfg, (150, 210))
    images = _images(2, 150, 210, seed=3)
    with torch.no_grad():
        boxes, scores, labels, count = module(images)
        eager = model([img / 255 for img in images])
    for i, det in enumerate(eager):
        assert int(count[i]) == len(det["scores"]) == 40  # 20 queries x 2 classes < K = 100
        assert torch.equal(labels[i, :40], det["labels"])
        assert torch.equal(scores[i, :40], det["scores"])
        assert torch.equal(boxes[i, :40], det["boxes"])
        assert not scores[i, 40:].any() and not labels[i, 40:].any()
