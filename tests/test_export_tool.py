"""`fad-export` end to end on a searched FCOS checkpoint: the ONNX file carries class names,
genotype, input size and config name; `fad-test` on it gives the AP of the `.pth`; `fad-demo`
on it finds the `.pth`'s detections on the real fixture's images; bad input is one line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, randomized_detector, voc_fixture

from fad.config import load_config
from fad.errors import FadError
from fad.nas.genotype import read_genotype_text

AUGMENT = os.path.join(REPO, "configs", "fad", "augment", "fad-fcos_tiny_synthetic.yaml")
PAPER = os.path.join(REPO, "configs", "fad", "genotypes", "fad_paper.log")
DETR = os.path.join(REPO, "configs", "deformable_detr", "tiny_synthetic.yaml")
CLASSES = ["red_circle", "green_square", "blue_triangle", "yellow_star"]  # the synthetic set's
SMALL = ["MODEL.DEVICE", "cpu", "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.FAD.TOWER_CHANNELS", "16",
         "MODEL.FAD.EDGE_CHANNELS", "8", "INPUT.MIN_SIZE_TEST", "160", "INPUT.MAX_SIZE_TEST",
         "256", "TEST.IMS_PER_BATCH", "1", "MODEL.FCOS.DETECTIONS_PER_IMG", "20"]


def _checkpoint(path: Path) -> None:
    """A random searched FCOS, stored as fad-train stores one (genotype in its cfg)."""
    cfg = load_config(AUGMENT, [*SMALL, "MODEL.FAD.GENOTYPE", read_genotype_text(PAPER)])
    model = randomized_detector(cfg, len(CLASSES), std=0.1, seed=2)
    torch.save({"model": model.state_dict(), "cfg": cfg.dump(), "classes": CLASSES,
                "iteration": 3}, path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """(model.pth, model.onnx): `fad-export --dynamic` of a searched FCOS; the config names no
    genotype (it comes from the checkpoint)."""
    pytest.importorskip("onnxruntime")
    from fad.cli.export import main

    folder = tmp_path_factory.mktemp("export")
    weight = folder / "model.pth"
    _checkpoint(weight)
    out = main(["--config-file", AUGMENT, *SMALL, "MODEL.WEIGHT", str(weight), "--format", "onnx",
                "--dynamic", "--output", str(folder / "model.onnx")])
    return weight, Path(out)


@pytest.mark.heavy
@pytest.mark.timeout(1500)  # exports take minutes on a loaded CPU
def test_the_onnx_file_carries_its_metadata(exported):
    import onnx

    proto = onnx.load(str(exported[1]))
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"]) == CLASSES
    assert meta["genotype"] == read_genotype_text(PAPER)
    assert json.loads(meta["input_size"]) == [160, 256] and json.loads(meta["dynamic"]) is True
    assert meta["config"] == "fad-fcos_tiny_synthetic.yaml" and meta["meta_architecture"] == "FCOS"


@pytest.mark.heavy
@pytest.mark.timeout(1500)  # exports take minutes on a loaded CPU
def test_fad_test_on_the_onnx_gives_the_ap_of_the_pth(exported, synthetic_root, tmp_path):
    from fad.cli.test import main

    metrics = {}
    for weight in exported:
        out = tmp_path / weight.suffix[1:]
        main(["--config-file", AUGMENT, *SMALL, "MODEL.WEIGHT", str(weight), "DATASETS.ROOT",
              synthetic_root, "OUTPUT_DIR", str(out), "MODEL.FCOS.SCORE_THRESH", "0.0"])
        path = out / "inference" / "synthetic_coco_val" / "metrics.json"
        metrics[weight.suffix] = json.loads(path.read_text())
    assert metrics[".pth"]["AP"] > 0  # the random detector finds something: the check can fail
    for key, value in metrics[".pth"].items():
        if isinstance(value, float):
            assert metrics[".onnx"][key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.heavy
@pytest.mark.timeout(1500)  # exports take minutes on a loaded CPU
def test_fad_demo_on_real_images_finds_the_detections_of_the_pth(exported, tmp_path):
    """The exported searched FCOS, end to end on the real fixture's photographs."""
    from fad.cli.demo import main

    images = voc_fixture("VOC2012", "JPEGImages")
    records = {}
    for weight in exported:
        records[weight.suffix] = main(["--config-file", AUGMENT, *SMALL, "MODEL.WEIGHT",
                                       str(weight), "--input", str(images), "--output",
                                       str(tmp_path / weight.suffix[1:]), "--score-threshold",
                                       "0.0"])
    assert len(records[".onnx"]) == len(records[".pth"]) > 0
    found = 0
    for eager, onnx in zip(records[".pth"], records[".onnx"]):
        assert len(onnx["detections"]) == len(eager["detections"])
        for a, b in zip(eager["detections"], onnx["detections"]):
            assert a["label"] == b["label"] and a["score"] == pytest.approx(b["score"], abs=1e-4)
            assert a["box"] == pytest.approx(b["box"], abs=1e-2)  # pixels of the original image
            found += 1
    assert found > 0


def _error(argv: list[str]) -> str:
    """The one-line error of `fad-export argv` (in-process)."""
    from fad.cli.export import main

    with pytest.raises(FadError) as info:
        main(argv)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_input_is_one_line(tmp_path):
    weight = tmp_path / "model.pth"
    _checkpoint(weight)
    base = ["--config-file", AUGMENT, *SMALL, "MODEL.WEIGHT", str(weight), "OUTPUT_DIR",
            str(tmp_path), "--output", str(tmp_path / "m.onnx")]
    assert "unsupported export format 'tflite'" in _error([*base, "--format", "tflite"])
    message = _error([*base, "--format", "onnx", "--dynamic", "--input-size", "96", "128"])
    assert "--dynamic takes input sizes above 128" in message
    # weights of another head width than the config builds
    message = _error([*base, "--format", "onnx", "MODEL.FAD.TOWER_CHANNELS", "24"])
    assert "model.pth" in message
    message = _error([*base, "--format", "onnx", "--msda", "tensorrt"])
    assert "--msda applies to detectors with multi-scale deformable attention" in message
    assert "--msda 'plugin' is unknown; use one of standard, tensorrt" in _error(
        [*base, "--format", "onnx", "--msda", "plugin"])
    assert "--format pt2 has no such choice" in _error([*base, "--format", "pt2", "--msda",
                                                        "tensorrt"])
    assert not (tmp_path / "m.onnx").exists()


def _detr_checkpoint(path: Path) -> int:
    """A random tiny Deformable DETR (+ refine, + two-stage), stored as fad-train stores one;
    returns its number of MSDA layers."""
    from fad.ops.msda.layer import MSDeformAttn

    cfg = load_config(DETR, ["MODEL.DEVICE", "cpu", "MODEL.DETR.NUM_QUERIES", "20"])
    model = randomized_detector(cfg, len(CLASSES), std=0.1, seed=5)
    torch.save({"model": model.state_dict(), "cfg": cfg.dump(), "classes": CLASSES,
                "iteration": 1}, path)
    return sum(isinstance(m, MSDeformAttn) for m in model.modules())


@pytest.mark.slow  # one ONNX export of a tiny Deformable DETR (~25 s on a loaded CPU)
@pytest.mark.timeout(600)
def test_msda_tensorrt_writes_one_plugin_node_per_msda_layer(tmp_path):
    """`fad-export --msda tensorrt`: every MSDA call is TensorRT's plugin node, no GridSample is
    left; ONNX Runtime (fad-test) refuses the file in one line."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from fad.cli.export import main
    from fad.export.onnx_model import OnnxDetector
    from fad.ops.msda.onnx import TRT_DOMAIN, TRT_OP

    weight = tmp_path / "detr.pth"
    layers = _detr_checkpoint(weight)
    out = main(["--config-file", DETR, "MODEL.DEVICE", "cpu", "MODEL.DETR.NUM_QUERIES", "20",
                "MODEL.WEIGHT", str(weight), "--format", "onnx", "--input-size", "96", "128",
                "--msda", "tensorrt", "--output", str(tmp_path / "detr.onnx")])
    proto = onnx.load(out)
    nodes = [n for graph in [proto.graph, *proto.functions] for n in graph.node]
    assert layers == 4  # 2 encoder + 2 decoder layers
    assert [(n.domain, n.op_type) for n in nodes if n.domain == TRT_DOMAIN] == [
        (TRT_DOMAIN, TRT_OP)] * layers
    assert "GridSample" not in {n.op_type for n in nodes}
    assert {p.key: p.value for p in proto.metadata_props}["msda"] == "tensorrt"
    with pytest.raises(FadError, match="TensorRT plugin nodes .* export with --msda standard"):
        OnnxDetector(out)


def test_missing_export_extra_is_named(monkeypatch):
    import importlib.util

    from fad.export.writer import require_onnx

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(FadError, match=r"needs onnxscript; install the export extra: pip install "
                                       r"'fad\[export\]'"):
        require_onnx()


def test_an_onnx_weight_that_is_not_onnx_is_one_line(tmp_path):
    pytest.importorskip("onnxruntime")
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a model")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "test_net.py"),
                           "--config-file", AUGMENT, *SMALL, "MODEL.WEIGHT", str(bad),
                           "OUTPUT_DIR", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "not a readable ONNX model" in last
    assert "Traceback" not in proc.stderr

