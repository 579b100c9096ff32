"""Evaluate a detector: `fad-test --config-file CFG MODEL.WEIGHT CKPT [KEY VALUE]`.

Writes `coco_results.json` and `metrics.json` (AP, AP50, AP75, APs, APm, APl; VOC mAP for
VOC-format sets) to OUTPUT_DIR/inference/<dataset>/ and prints the table. A checkpoint of a
searched detector carries its genotype, so `--genotype-file` is only needed for foreign weights.
"""
from __future__ import annotations

from collections.abc import Sequence

from fad.augment import build_model
from fad.data import build_dataset
from fad.engine.checkpoint import Checkpointer, load_model_weights
from fad.engine.evaluate import evaluate_all
from fad.engine.launch import default_argument_parser, parse_args, run_tool, setup
from fad.errors import ConfigError
from fad.nas.genotype import read_genotype_text


def main(argv: Sequence[str] | None = None) -> None:
    """Parse `argv`, load MODEL.WEIGHT (and its genotype) and evaluate on DATASETS.TEST."""
    args = parse_args(default_argument_parser(__doc__, genotype_file=True), argv)
    cfg, logger, device = setup(args)
    if not cfg.MODEL.WEIGHT:
        raise ConfigError("no weights to test; give MODEL.WEIGHT path/to/model_final.pth")
    state = Checkpointer.load(cfg.MODEL.WEIGHT)
    if args.genotype_file:
        genotype, source = read_genotype_text(args.genotype_file), args.genotype_file
    else:
        genotype, source = state.get("genotype", ""), f"{cfg.MODEL.WEIGHT} (stored genotype)"
        if genotype:
            logger.info("using the genotype stored in %s", cfg.MODEL.WEIGHT)
    classes = state.get("classes")
    if classes is None:
        classes = build_dataset(cfg, cfg.DATASETS.TEST[:1], is_train=False).classes
    model = build_model(cfg, len(classes), genotype, source)
    load_model_weights(model, state, cfg.MODEL.WEIGHT)
    evaluate_all(cfg, model.to(device), device, classes)


def run() -> None:
    """The `fad-test` console command (also `python tools/test_net.py`)."""
    run_tool(main)
