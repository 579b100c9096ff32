"""Check the images of a config's datasets alone, before a long run.

    fad-check-data --config-file CFG [KEY VALUE ...]      # e.g. DATASETS.CHECK_WORKERS 8

Builds every DATASETS.TRAIN and DATASETS.TEST set (annotations read, class list logged) and
checks each image as fad-train/fad-test/fad-search do before their first step, whatever
DATASETS.CHECK_IMAGES says: the file exists, decodes fully, has its annotated size. Prints one
line per bad file and a summary per dataset; exit 0 when all are good, 2 otherwise. Images found
good are cached (docs/data.md), so the runs that follow only stat them. Writes nothing else
(but synthetic_* sets, generated when missing as by every tool).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

from fad.config import load_config
from fad.config.catalog import check_dataset_names
from fad.data import build_dataset
from fad.data.check import CheckReport, check_dataset_images
from fad.engine.launch import default_argument_parser, parse_args
from fad.engine.logger import setup_logger
from fad.engine.tool import run_command
from fad.errors import DataError

logger = logging.getLogger("fad")


def main(argv: Sequence[str] | None = None) -> dict[str, CheckReport]:
    """Parse `argv`, check every image of DATASETS.TRAIN and DATASETS.TEST; returns the report
    of each set. A DataError (exit 2) names the count of bad files after all sets are checked."""
    args = parse_args(default_argument_parser(__doc__), argv)
    cfg = load_config(args.config_file, args.opts)
    workers = cfg.DATASETS.CHECK_WORKERS
    cfg.DATASETS.CHECK_IMAGES = False  # this tool checks below, reporting every set
    cfg.freeze()
    names = list(dict.fromkeys((*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST)))
    check_dataset_names(cfg, names)
    setup_logger(None, verbose=args.verbose)
    reports = {}
    for name in names:
        report = check_dataset_images(build_dataset(cfg, [name], is_train=False), workers)
        for line in report.problems:
            logger.error(line)
        logger.info(report.summary(name))
        rules = report.rules_line(name)
        if rules:
            logger.warning(rules)
        reports[name] = report
    bad = sum(len(r.problems) for r in reports.values())
    total = sum(r.total for r in reports.values())
    if bad:
        raise DataError(f"{bad} of {total} images are missing, corrupt or not the annotated size "
                        "(one line each above); replace or fix them")
    logger.info("all %d images of %s are good", total, ", ".join(names))
    return reports


def run() -> None:
    """The `fad-check-data` console command (also `python tools/check_data.py`)."""
    run_command(main)
