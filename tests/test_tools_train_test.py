"""train_net / test_net end to end on tiny synthetic data, and their one-line errors."""
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO
from pycocotools.coco import COCO
from yacs.config import CfgNode

TINY = ["MODEL.DEVICE", "cpu", "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.FCOS.NUM_CONVS", "1",
        "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "96",
        "INPUT.MAX_SIZE_TEST", "128", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "4",
        "SOLVER.WARMUP_ITERS", "2", "SOLVER.STEPS", "(3,)", "SOLVER.CHECKPOINT_PERIOD", "2"]


def tool(name, *args):
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", name), *args],
                          capture_output=True, text=True, cwd=REPO)


@pytest.mark.slow
def test_train_then_test_writes_metrics(synthetic_root, tmp_path):
    cfg = os.path.join(REPO, "configs", "fcos", "fcos_tiny_synthetic.yaml")
    common = ["DATASETS.ROOT", synthetic_root, "OUTPUT_DIR", str(tmp_path)] + TINY
    run = tool("train_net.py", "--config-file", cfg, "--skip-test", *common)
    assert run.returncode == 0, run.stderr[-2000:]
    assert os.path.isfile(tmp_path / "model_0000002.pth")
    assert os.path.isfile(tmp_path / "model_final.pth")
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_final.pth"
    # an almost untrained model: keep every score so that there are results to evaluate
    run = tool("test_net.py", "--config-file", cfg, "MODEL.WEIGHT",
               str(tmp_path / "model_final.pth"), *common, "MODEL.FCOS.SCORE_THRESH", "0.0",
               "MODEL.FCOS.DETECTIONS_PER_IMG", "20")
    assert run.returncode == 0, run.stderr[-2000:]
    out = tmp_path / "inference" / "synthetic_coco_val"
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl"} <= metrics.keys()
    # the written results: 20 per image of the annotation file, in its image and category ids
    gt = COCO(os.path.join(synthetic_root, "synthetic_coco", "annotations", "instances_val.json"))
    results = json.loads((out / "coco_results.json").read_text())
    per_image = [sum(r["image_id"] == i for r in results) for i in gt.getImgIds()]
    assert per_image == [20] * len(gt.getImgIds()) and len(results) == sum(per_image)
    assert {r["category_id"] for r in results} <= set(gt.getCatIds())
    assert all(len(r["bbox"]) == 4 and r["bbox"][2] >= 0 and r["bbox"][3] >= 0 for r in results)
    assert "| AP" in run.stdout


def test_bad_inputs_give_one_line_errors(tmp_path):
    cfg = os.path.join(REPO, "configs", "fcos", "fcos_tiny_synthetic.yaml")
    run = tool("test_net.py", "--config-file", cfg, "OUTPUT_DIR", str(tmp_path))
    assert run.returncode != 0 and "MODEL.WEIGHT" in run.stderr and "Traceback" not in run.stderr
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"garbage")
    run = tool("test_net.py", "--config-file", cfg, "MODEL.WEIGHT", str(bad),
               "OUTPUT_DIR", str(tmp_path))
    assert run.returncode != 0 and "broken.pth" in run.stderr and "Traceback" not in run.stderr
    run = tool("train_net.py", "--config-file", cfg, "SOLVER.NOPE", "1",
               "OUTPUT_DIR", str(tmp_path))
    assert run.returncode != 0 and "SOLVER.NOPE" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.slow
def test_genotype_file_flow_through_the_checkpoint(synthetic_root, tmp_path):
    """train_net --genotype-file stores the genotype in the checkpoint's config
    (MODEL.FAD.GENOTYPE); test_net rebuilds the searched towers from it (no genotype file, no
    temporary files)."""
    cfg = os.path.join(REPO, "configs", "fad", "augment", "fad-fcos_tiny_synthetic.yaml")
    paper = os.path.join(REPO, "configs", "fad", "genotypes", "fad_paper.log")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    common = ["DATASETS.ROOT", synthetic_root, "OUTPUT_DIR", str(tmp_path / "out"), *TINY,
              "MODEL.FAD.TOWER_CHANNELS", "16", "MODEL.FAD.EDGE_CHANNELS", "8",
              "SOLVER.MAX_ITER", "2"]
    run = subprocess.run([sys.executable, os.path.join(REPO, "tools", "train_net.py"),
                          "--config-file", cfg, *common, "--genotype-file", paper, "--skip-test"],
                         capture_output=True, text=True, cwd=REPO, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    weights = tmp_path / "out" / "model_final.pth"
    with open(paper, encoding="utf-8") as f:
        stored = CfgNode.load_cfg(torch.load(weights, weights_only=False)["cfg"])
        assert stored.MODEL.FAD.GENOTYPE == f.read()
    run = subprocess.run([sys.executable, os.path.join(REPO, "tools", "test_net.py"),
                          "--config-file", cfg, *common, "MODEL.WEIGHT", str(weights)],
                         capture_output=True, text=True, cwd=REPO, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "using the genotype stored in" in run.stdout
    metrics = json.loads((tmp_path / "out" / "inference" / "synthetic_coco_val" /
                          "metrics.json").read_text())
    assert "AP" in metrics
    assert not [p for p in tmp.iterdir() if "genotype" in p.name]
