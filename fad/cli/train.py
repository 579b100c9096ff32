"""Train a detector: `fad-train --config-file CFG [--resume | --overwrite] [KEY VALUE ...]`.

With `--genotype-file genotype.log` (or MODEL.FAD.GENOTYPE) the FCOS towers are rebuilt from a
FAD search (augment); the genotype text is then MODEL.FAD.GENOTYPE of the run's config.yaml and
of every checkpoint, so fad-test (tools/test_net.py) needs no genotype file.
After training the model is evaluated on DATASETS.TEST unless `--skip-test`.
"""
from __future__ import annotations

from collections.abc import Sequence

from fad.data import build_dataset, check_num_classes
from fad.engine.evaluate import evaluate_all
from fad.engine.launch import default_argument_parser, parse_args, setup
from fad.engine.tool import run_command
from fad.engine.trainer import train
from fad.modeling import build_detector


def main(argv: Sequence[str] | None = None) -> None:
    """Parse `argv`, train, then evaluate on DATASETS.TEST."""
    parser = default_argument_parser(__doc__, genotype_file=True, resumable=True)
    parser.add_argument("--skip-test", action="store_true", help="do not evaluate after training")
    args = parse_args(parser, argv)
    cfg, logger, device = setup(args)
    dataset = build_dataset(cfg, cfg.DATASETS.TRAIN, is_train=True)
    num_classes = check_num_classes(cfg, dataset)
    if not args.skip_test:  # the test sets' annotations and images, checked before the first step
        for name in cfg.DATASETS.TEST:
            build_dataset(cfg, [name], is_train=False)
    logger.info("training on %s: %d images, %d classes", cfg.DATASETS.TRAIN, len(dataset),
                num_classes)
    model = build_detector(cfg, num_classes).to(device)
    final = train(cfg, model, dataset, device, resume=args.resume,
                  extra_state={"classes": list(dataset.classes)})
    if not args.skip_test:
        evaluate_all(cfg, model, device, dataset.classes, cfg.SOLVER.MAX_ITER)
    logger.info("final checkpoint: %s", final)


def run() -> None:
    """The `fad-train` console command (also `python tools/train_net.py`)."""
    run_command(main)
