"""Evaluate a detector: `fad-test --config-file CFG MODEL.WEIGHT CKPT [KEY VALUE]`.

Writes `coco_results.json` and `metrics.json` (AP, AP50, AP75, APs, APm, APl; VOC mAP for
VOC-format sets) to OUTPUT_DIR/inference/<dataset>/ and prints the table; the config goes to
OUTPUT_DIR/config_test.yaml (a training run's config.yaml in that folder stays as it is). A
checkpoint of a searched detector carries its genotype (MODEL.FAD.GENOTYPE of its stored config),
so the searched model is rebuilt from it; `--genotype-file` (MODEL.FAD.GENOTYPE) is only needed
for foreign weights, and the stored genotype wins over a disagreeing one (a warning line says so).
"""
from __future__ import annotations

from collections.abc import Sequence

from fad.engine.evaluate import evaluate_all
from fad.engine.launch import default_argument_parser, parse_args, setup
from fad.engine.tool import run_command

from .trained_model import load_trained_model


def main(argv: Sequence[str] | None = None) -> None:
    """Parse `argv`, load MODEL.WEIGHT (checked against the config; with its stored genotype)
    and evaluate on DATASETS.TEST."""
    args = parse_args(default_argument_parser(__doc__, genotype_file=True), argv)
    cfg, _, device = setup(args, config_name="config_test.yaml")
    trained = load_trained_model(cfg)
    evaluate_all(cfg, trained.model.to(device), device, trained.classes, trained.iteration)


def run() -> None:
    """The `fad-test` console command (also `python tools/test_net.py`)."""
    run_command(main)
