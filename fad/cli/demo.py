"""Run a trained detector on your images and draw what it finds.

    fad-demo --config-file CFG MODEL.WEIGHT model_final.pth --input IMG_OR_DIR --output DIR \\
        [--genotype-file genotype.log] [--score-threshold 0.3] [KEY VALUE ...]

Works with every detector of the train/test tools (FCOS, searched FCOS, SparseResNet, the DETR
family, Faster R-CNN). Writes DIR/<image>.jpg (boxes, class names and scores drawn),
DIR/detections.json (boxes in pixels of the original image), DIR/log.txt and
DIR/config_demo.yaml (not config.yaml: a training run's own config stays when DIR is its folder).
Class names and the genotype of a searched detector come from the checkpoint (`--genotype-file`,
i.e. MODEL.FAD.GENOTYPE, only for weights that store none). Images are read TEST.IMS_PER_BATCH
at a time; those among them whose resized sizes pad to one canvas (INPUT.SIZE_DIVISIBILITY) go
through the detector together (each gets the canvas it gets alone, so its detections do not
depend on the others).
"""
from __future__ import annotations

import os
from collections.abc import Sequence

from fad.data.transforms import build_transforms
from fad.engine.demo import DETECTIONS_FILE, list_images, run_demo
from fad.engine.launch import default_argument_parser, parse_args, setup
from fad.engine.tool import run_command

from .trained_model import load_trained_model


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Parse `argv`, detect on every input image, write the drawings and detections.json."""
    parser = default_argument_parser(__doc__, genotype_file=True)
    parser.add_argument("--input", required=True, metavar="IMG_OR_DIR",
                        help="an image file, or a folder whose images are all used")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="folder for the drawn images and detections.json")
    parser.add_argument("--score-threshold", type=float, default=0.3, metavar="S",
                        help="draw and list detections scoring at least S (default 0.3)")
    args = parse_args(parser, argv)
    if not 0.0 <= args.score_threshold <= 1.0:
        parser.error(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    images = list_images(args.input)
    args.opts = [*args.opts, "OUTPUT_DIR", args.output]
    cfg, logger, device = setup(args, config_name="config_demo.yaml")
    model, classes = load_trained_model(cfg)[:2]
    records = run_demo(model.to(device), classes, build_transforms(cfg, is_train=False), images,
                       args.output, args.score_threshold, device, cfg.TEST.IMS_PER_BATCH,
                       cfg.INPUT.SIZE_DIVISIBILITY)
    total = sum(len(r["detections"]) for r in records)
    logger.info("drew %d detections on %d images in %s; all of them: %s", total, len(records),
                args.output, os.path.join(args.output, DETECTIONS_FILE))
    return records


def run() -> None:
    """The `fad-demo` console command (also `python tools/demo.py`)."""
    run_command(main)
