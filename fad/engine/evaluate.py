"""Evaluate a model on every DATASETS.TEST set: inference, metrics files, the log table and the
metrics as tensorboard scalars (`eval/<dataset>/<metric>` at the model's training iteration)."""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from yacs.config import CfgNode

from fad.data import build_dataset, make_test_loader
from fad.errors import ConfigError
from fad.evaluation import format_table, run_evaluation

from .distributed import is_main_process, synchronize
from .hooks import collect_log_stats
from .inference import inference
from .logger import TensorboardWriter

logger = logging.getLogger("fad")


def metric_scalars(prefix: str, metrics: Mapping) -> dict[str, float]:
    """The numbers of a metrics dict as tensorboard scalars `prefix/<key>`; a nested dict of
    numbers (e.g. VOC_per_class) becomes `prefix/<key>/<name>`; None and other values are
    left out."""
    scalars: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            scalars.update(metric_scalars(f"{prefix}/{key}", value))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            scalars[f"{prefix}/{key}"] = float(value)
    return scalars


def evaluate_all(cfg: CfgNode, model: nn.Module, device: torch.device,
                 classes: Sequence[str], iteration: int = 0) -> dict[str, dict]:
    """Evaluate `model` (trained on `classes` for `iteration` iterations) on every DATASETS.TEST
    name.

    Writes OUTPUT_DIR/inference/<name>/ (coco_results.json, metrics.json with the model's
    `log_stats()` on the test set, e.g. SparseResNet densities), logs the table and writes the
    metrics to OUTPUT_DIR/tb as `eval/<name>/<metric>` at step `iteration`. Returns
    {name: metrics} on the main rank, {} on the others.
    """
    results = {}
    for name in cfg.DATASETS.TEST:
        dataset = build_dataset(cfg, [name], is_train=False)
        if list(dataset.classes) != list(classes):
            raise ConfigError(f"DATASETS.TEST {name} has classes {list(dataset.classes)} but the "
                              f"model was trained on {list(classes)}; test on a set with the "
                              "training classes")
        preds = inference(model, make_test_loader(cfg, dataset), device)
        stats = collect_log_stats(model)
        if is_main_process():
            out_dir = os.path.join(cfg.OUTPUT_DIR, "inference", name)
            metrics = run_evaluation(dataset, preds, out_dir, extra_metrics=stats)
            logger.info("results on %s (%d images), written to %s:\n%s%s", name, len(dataset),
                        out_dir, format_table(metrics),
                        "".join(f"\n{k}: {v:.4f}" for k, v in sorted(stats.items())))
            results[name] = metrics
            tb = TensorboardWriter(cfg.OUTPUT_DIR)
            tb.add_scalars(metric_scalars(f"eval/{name}", metrics), iteration)
            tb.close()
        synchronize()
    return results
