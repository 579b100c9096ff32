"""FCOS export (plain and searched heads): the export module's static-shape post-processing
equals the eager model's detections, and the ONNX / pt2 graphs (ONNX Runtime, torch.export.load)
equal them at batch 1 and 2, fixed and dynamic sizes; the ONNX file passes onnx.checker and
carries its metadata."""
import json
import os

import pytest
import torch
from conftest import REPO, differ_only_at_ties, randomized_detector, tiny_fcos_cfg

from fad.config import load_config
from fad.export import build_export_module, pad_detections
from fad.export.writer import write_export
from fad.nas.genotype import read_genotype_text

AUGMENT = os.path.join(REPO, "configs", "fad", "augment", "fad-fcos_tiny_synthetic.yaml")
PAPER = os.path.join(REPO, "configs", "fad", "genotypes", "fad_paper.log")
SEARCHED = ["MODEL.DEVICE", "cpu", "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.FAD.TOWER_CHANNELS",
            "16", "MODEL.FAD.EDGE_CHANNELS", "8"]


def _plain():
    cfg = tiny_fcos_cfg("unused", "unused")
    return cfg, randomized_detector(cfg, 3, std=0.1)


def _searched():
    cfg = load_config(AUGMENT, [*SEARCHED, "MODEL.FAD.GENOTYPE", read_genotype_text(PAPER)])
    return cfg, randomized_detector(cfg, 4, std=0.1, seed=1)


def _sparse():
    """SAI: FCOS on a SparseResNet-18 with deterministic masks, run sparse by the eager model."""
    cfg = tiny_fcos_cfg("unused", "unused")
    cfg.merge_from_list(["MODEL.BACKBONE.NAME", "sparse_resnet", "MODEL.SPARSE.SAMPLING",
                         "deterministic", "MODEL.SPARSE.EXECUTION", "sparse",
                         "MODEL.SPARSE.GRID_INTERVAL", 3])
    return cfg, randomized_detector(cfg, 3, std=0.1, seed=4)


def _images(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((n, 3, h, w), generator=gen) * 255


def assert_matches_eager(model, images: torch.Tensor, outputs, tie_order: bool = False) -> None:
    """`outputs` (boxes, scores, labels, num_detections; tensors or numpy) equal the eager
    detections of `images` [N, 3, H, W] 0-255: same count, labels and order, boxes within 1e-3
    px, scores within 1e-4, rows past the count zero. With `tie_order`, rows of the same score
    (1e-6) may come in another order (`differ_only_at_ties`)."""
    boxes, scores, labels, num = (torch.as_tensor(o) for o in outputs)
    with torch.no_grad():
        eager = model([img / 255 for img in images])
    assert boxes.dtype == scores.dtype == torch.float32
    assert labels.dtype == num.dtype == torch.int64
    assert boxes.shape[:2] == scores.shape == labels.shape and num.shape == (len(images),)
    for i, det in enumerate(eager):
        n = int(num[i])
        assert n == len(det["scores"]) > 0
        if tie_order:
            differ_only_at_ties(_rows(det["labels"], det["scores"], det["boxes"]),
                                _rows(labels[i, :n], scores[i, :n], boxes[i, :n]), box_atol=1e-3)
        else:
            assert torch.equal(labels[i, :n], det["labels"])
            torch.testing.assert_close(boxes[i, :n], det["boxes"], atol=1e-3, rtol=0)
            torch.testing.assert_close(scores[i, :n], det["scores"], atol=1e-4, rtol=0)
        assert not boxes[i, n:].any() and not scores[i, n:].any() and not labels[i, n:].any()


def _rows(labels: torch.Tensor, scores: torch.Tensor, boxes: torch.Tensor) -> list[tuple]:
    """(label, score, box) rows of one image's detections: labels [K], scores [K], boxes [K, 4]."""
    return list(zip(labels.tolist(), scores.tolist(), boxes.tolist()))


def test_pad_detections_ranks_the_valid_rows_and_zeros_the_rest():
    boxes = torch.arange(24.0).reshape(2, 3, 4)
    scores = torch.tensor([[0.5, 0.9, 0.1], [0.2, 0.3, 0.4]])
    labels = torch.tensor([[1, 2, 3], [4, 5, 6]])
    valid = torch.tensor([[True, True, False], [False, True, True]])
    b, s, lab, num = pad_detections(boxes, scores, labels, valid, 4)
    assert num.tolist() == [2, 2]
    assert torch.equal(s, torch.tensor([[0.9, 0.5, 0, 0], [0.4, 0.3, 0, 0]]))
    assert lab.tolist() == [[2, 1, 0, 0], [6, 5, 0, 0]]
    assert torch.equal(b[0, :2], boxes[0, [1, 0]]) and torch.equal(b[1, :2], boxes[1, [2, 1]])
    assert not b[:, 2:].any()
    b, s, lab, num = pad_detections(boxes, scores, labels, valid, 1)  # fewer rows than valid
    assert num.tolist() == [1, 1] and lab.tolist() == [[2], [6]]


@pytest.mark.parametrize("build", [_plain, _searched, _sparse], ids=["plain", "searched", "sai"])
@pytest.mark.parametrize("shape", [(1, 96, 128), (2, 100, 150), (2, 160, 192)])
def test_export_module_equals_the_eager_detections(build, shape):
    """Static-shape post-processing (masked threshold, fixed top-k, one NMS over the batch),
    including a size that is not a multiple of SIZE_DIVISIBILITY (padded inside)."""
    cfg, model = build()
    module = build_export_module(model, cfg, shape[1:])
    images = _images(*shape)
    with torch.no_grad():
        outputs = module(images)
    assert outputs[0].shape == (shape[0], cfg.MODEL.FCOS.DETECTIONS_PER_IMG, 4)
    assert_matches_eager(model, images, outputs)


def _onnx_run(path, images):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images.numpy()})


@pytest.mark.slow
@pytest.mark.timeout(1500)  # exports take minutes on a loaded CPU
def test_onnx_fixed_size_batch_2_equals_eager_and_passes_the_checker(tmp_path):
    onnx = pytest.importorskip("onnx")
    cfg, model = _plain()
    path = tmp_path / "fcos.onnx"
    write_export(build_export_module(model, cfg, (96, 128)), str(path), "onnx", 2, False,
                 {"classes": json.dumps(["a", "b", "c"])})
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert {p.key: p.value for p in proto.metadata_props}["classes"] == '["a", "b", "c"]'
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["boxes", "scores", "labels",
                                                    "num_detections"]
    assert any(n.op_type == "NonMaxSuppression" for n in proto.graph.node)
    images = _images(2, 96, 128, seed=3)
    assert_matches_eager(model, images, _onnx_run(path, images))


def test_a_sparse_backbone_is_exported_dense_masked():
    cfg, model = _sparse()
    module = build_export_module(model, cfg, (96, 128))
    from fad.modeling.backbone.sparse_resnet import SparseResNetBody

    def bodies(m):
        return [b for b in m.modules() if isinstance(b, SparseResNetBody)]
    assert [b.execution for b in bodies(module)] == ["dense_masked"]  # a copy of the model:
    assert [b.execution for b in bodies(model)] == ["sparse"]  # the trained one still runs sparse


@pytest.mark.heavy
@pytest.mark.timeout(3600)  # the SAI dynamic export alone: 17 min at load 3 on the 2 cores
@pytest.mark.parametrize("build", [_plain, _searched, _sparse], ids=["plain", "searched", "sai"])
def test_onnx_dynamic_equals_eager_at_batch_1_and_2_and_several_sizes(build, tmp_path):
    """Up to the order of equal scores: the searched head's random scores collide in float32
    (at 199x133 and 150x230, pairs of exactly equal eager scores come out swapped)."""
    pytest.importorskip("onnxruntime")
    cfg, model = build()
    path = tmp_path / "fcos.onnx"
    write_export(build_export_module(model, cfg, (160, 192)), str(path), "onnx", 1, True, {})
    for n, h, w in [(1, 160, 192), (2, 199, 133), (2, 150, 230)]:  # padded inside
        images = _images(n, h, w, seed=h + w)
        assert_matches_eager(model, images, _onnx_run(path, images), tie_order=True)


@pytest.mark.heavy
@pytest.mark.timeout(1500)  # exports take minutes on a loaded CPU
def test_pt2_dynamic_equals_eager(tmp_path):
    cfg, model = _plain()
    path = tmp_path / "fcos.pt2"
    write_export(build_export_module(model, cfg, (160, 192)), str(path), "pt2", 1, True,
                 {"classes": "[]"})
    program = torch.export.load(str(path)).module()
    for n, h, w in [(1, 160, 192), (2, 150, 230)]:
        images = _images(n, h, w, seed=n)
        with torch.no_grad():
            assert_matches_eager(model, images, program(images))
