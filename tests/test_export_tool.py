"""`fad-export` end to end on a searched FCOS checkpoint: the ONNX file carries class names,
genotype, input size and config name; `fad-test` and `fad-demo` on it find the `.pth`'s
detections (and AP) on the real fixture's images; `--msda tensorrt` writes TensorRT's plugin
node; bad input is one line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import (
    REPO,
    differ_only_at_ties,
    randomized_detector,
    save_box_biased_fcos,
    voc_fixture,
)

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


def _real_classes() -> tuple[list[str], list[str]]:
    """(config overrides that register the real fixture as DATASETS.TEST, its class names)."""
    from fad.data import build_dataset

    real = voc_fixture("VOC2012")
    opts = ["DATASETS.REGISTER", f"('voc_real_mini:voc:{real}:trainval',)", "DATASETS.TEST",
            "('voc_real_mini',)"]
    dataset = build_dataset(load_config(AUGMENT, [*SMALL, *opts]), ["voc_real_mini"], False)
    return opts, list(dataset.classes)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """(model.pth, model.onnx, config overrides for the real fixture): a random searched FCOS
    with the real fixture's classes (box regression biased to ~1 stride a side, so that some
    boxes hit the objects), `fad-export` at 160 x 213, the size the test transforms give the
    fixture's 640 x 480 photographs; the config names no genotype (it comes from the
    checkpoint)."""
    pytest.importorskip("onnxruntime")
    from fad.cli.export import main

    opts, classes = _real_classes()
    folder = tmp_path_factory.mktemp("export")
    weight = folder / "model.pth"
    cfg = load_config(AUGMENT, [*SMALL, "MODEL.FAD.GENOTYPE", read_genotype_text(PAPER)])
    save_box_biased_fcos(cfg, classes, weight, seed=2, iteration=3)
    out = main(["--config-file", AUGMENT, *SMALL, "MODEL.WEIGHT", str(weight), "--format", "onnx",
                "--input-size", "160", "213", "--output", str(folder / "model.onnx")])
    return weight, Path(out), opts




@pytest.mark.heavy
@pytest.mark.timeout(900)
def test_the_onnx_file_carries_its_metadata(exported):
    import onnx

    proto = onnx.load(str(exported[1]))
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"]) == _real_classes()[1]
    assert meta["genotype"] == read_genotype_text(PAPER)
    assert json.loads(meta["input_size"]) == [160, 213] and json.loads(meta["dynamic"]) is False
    assert meta["config"] == "fad-fcos_tiny_synthetic.yaml" and meta["meta_architecture"] == "FCOS"
    assert json.loads(meta["batch"]) == 1 and meta["msda"] == "standard"


@pytest.mark.heavy
@pytest.mark.timeout(900)
def test_fad_test_on_the_real_fixture_gives_the_ap_of_the_pth(exported, tmp_path):
    """The exported searched FCOS evaluated end to end on the real fixture's photographs: the
    detections of the `.pth` (up to the order of equal scores), so its AP."""
    from fad.cli.test import main

    metrics, rows = {}, {}
    for weight in exported[:2]:
        out = tmp_path / weight.suffix[1:]
        main(["--config-file", AUGMENT, *SMALL, *exported[2], "MODEL.WEIGHT", str(weight),
              "OUTPUT_DIR", str(out), "MODEL.FCOS.SCORE_THRESH", "0.0"])
        folder = out / "inference" / "voc_real_mini"
        metrics[weight.suffix] = json.loads((folder / "metrics.json").read_text())
        rows[weight.suffix] = {}
        for d in json.loads((folder / "coco_results.json").read_text()):
            rows[weight.suffix].setdefault(d["image_id"], []).append(
                (d["category_id"], d["score"], d["bbox"]))
    print("real fixture:", {k: {m: round(v[m], 6) for m in ("AP", "AP50", "VOC_mAP")}
                            for k, v in metrics.items()})
    assert sorted(rows[".onnx"]) == sorted(rows[".pth"]) and len(rows[".pth"]) == 12
    differ = sum(differ_only_at_ties(rows[".pth"][i], rows[".onnx"][i]) for i in rows[".pth"])
    total = sum(len(r) for r in rows[".pth"].values())
    print(f"real fixture: {differ} of {total} detections differ (equal scores)")
    assert differ <= total // 100
    assert metrics[".pth"]["VOC_mAP"] > 0  # the random detector finds something
    for key in ("AP", "AP50", "AP75", "VOC_mAP"):  # one tie-broken detection moves them a little
        assert metrics[".onnx"][key] == pytest.approx(metrics[".pth"][key], abs=5e-3), key


@pytest.mark.heavy
@pytest.mark.timeout(900)
def test_fad_demo_on_real_images_finds_the_detections_of_the_pth(exported, tmp_path):
    """fad-demo with the exported file on the real fixture's photographs: the `.pth`'s
    detections (boxes in the original image's pixels), up to the order of equal scores."""
    from fad.cli.demo import main

    images = voc_fixture("VOC2012", "JPEGImages")
    records = {}
    for weight in exported[:2]:
        records[weight.suffix] = main(["--config-file", AUGMENT, *SMALL, "MODEL.WEIGHT",
                                       str(weight), "--input", str(images), "--output",
                                       str(tmp_path / weight.suffix[1:]), "--score-threshold",
                                       "0.0"])
    assert len(records[".onnx"]) == len(records[".pth"]) == 12
    differ = total = 0
    for eager, onnx in zip(records[".pth"], records[".onnx"]):
        differ += differ_only_at_ties(
            [(d["label"], d["score"], d["box"]) for d in eager["detections"]],
            [(d["label"], d["score"], d["box"]) for d in onnx["detections"]])
        total += len(eager["detections"])
    assert total > 0 and differ <= total // 100


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

