"""Train a detector: `python tools/train_net.py --config-file CFG [--resume] [KEY VALUE ...]`.

With `--genotype-file genotype.log` the FCOS towers are rebuilt from a FAD search (augment).
After training the model is evaluated on DATASETS.TEST unless `--skip-test`.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import argument_parser, build_model, read_genotype_text, run_tool, setup  # noqa: E402
from test_net import evaluate_all  # noqa: E402

from fad.data import build_dataset  # noqa: E402
from fad.engine.trainer import train  # noqa: E402


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last_checkpoint")
    parser.add_argument("--skip-test", action="store_true", help="do not evaluate after training")
    args = parser.parse_args()
    cfg, logger, device = setup(args)
    dataset = build_dataset(cfg, cfg.DATASETS.TRAIN, is_train=True)
    num_classes = dataset.num_classes
    if cfg.MODEL.NUM_CLASSES and cfg.MODEL.NUM_CLASSES != num_classes:
        raise SystemExit(f"error: MODEL.NUM_CLASSES {cfg.MODEL.NUM_CLASSES} but {cfg.DATASETS.TRAIN} "
                         f"has {num_classes} classes; set MODEL.NUM_CLASSES 0 to take it from the data")
    logger.info("training on %s: %d images, %d classes", cfg.DATASETS.TRAIN, len(dataset), num_classes)
    model = build_model(cfg, num_classes, args.genotype_file).to(device)
    extra = {"classes": list(dataset.classes)}
    if args.genotype_file:
        extra["genotype"] = read_genotype_text(args.genotype_file)
    final = train(cfg, model, dataset, device, resume=args.resume, extra_state=extra)
    if not args.skip_test:
        evaluate_all(cfg, model, device, logger, dataset.classes)
    logger.info("final checkpoint: %s", final)


if __name__ == "__main__":
    run_tool(main)
