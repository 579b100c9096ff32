"""Evaluation metrics also go to tensorboard: `eval/<dataset>/<metric>` at the training
iteration."""
import os

import pytest
import torch
from conftest import tiny_fcos_cfg

from fad.data import build_dataset
from fad.engine.evaluate import evaluate_all, metric_scalars
from fad.modeling import build_detector


def test_metric_scalars_flatten_numbers_only():
    metrics = {"AP": 12.5, "APs": -1, "VOC_mAP": 40.0, "ok": True, "note": "x",
               "VOC_per_class": {"cat": 50.0, "dog": None}}
    assert metric_scalars("eval/set", metrics) == {
        "eval/set/AP": 12.5, "eval/set/APs": -1.0, "eval/set/VOC_mAP": 40.0,
        "eval/set/VOC_per_class/cat": 50.0}


def test_evaluate_all_writes_tensorboard_scalars(synthetic_root, tmp_path):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    cfg = tiny_fcos_cfg(synthetic_root, str(tmp_path))
    cfg.merge_from_list(["DATASETS.TEST", ("synthetic_voc_val",)])
    classes = list(build_dataset(cfg, cfg.DATASETS.TEST, is_train=False).classes)
    model = build_detector(cfg, len(classes))
    results = evaluate_all(cfg, model, torch.device("cpu"), classes, iteration=123)
    metrics = results["synthetic_voc_val"]
    events = accumulator.EventAccumulator(os.path.join(str(tmp_path), "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"eval/synthetic_voc_val/AP", "eval/synthetic_voc_val/VOC_mAP"} <= set(tags)
    (ap,) = events.Scalars("eval/synthetic_voc_val/AP")
    assert ap.step == 123 and ap.value == pytest.approx(metrics["AP"])

