"""Evaluate a model on every DATASETS.TEST set: inference, metrics files and the log table."""
from __future__ import annotations

import logging
import os
from typing import Sequence

import torch
from torch import nn
from yacs.config import CfgNode

from fad.data import build_dataset, make_test_loader
from fad.errors import ConfigError
from fad.evaluation import format_table, run_evaluation

from .distributed import is_main_process, synchronize
from .hooks import collect_log_stats
from .inference import inference

logger = logging.getLogger("fad")


def evaluate_all(cfg: CfgNode, model: nn.Module, device: torch.device,
                 classes: Sequence[str]) -> dict[str, dict]:
    """Evaluate `model` (trained on `classes`) on every DATASETS.TEST name.

    Writes OUTPUT_DIR/inference/<name>/ (coco_results.json, metrics.json with the model's
    `log_stats()` on the test set, e.g. SparseResNet densities) and logs the table. Returns
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
        synchronize()
    return results
