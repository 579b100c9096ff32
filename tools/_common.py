"""Shared start-up of the command-line tools: arguments, config, logging, device, model."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from fad.config import load_config
from fad.data import DataError
from fad.engine.checkpoint import CheckpointError
from fad.errors import EvalError
from fad.engine.distributed import get_rank, init_distributed
from fad.engine.logger import setup_logger
from fad.modeling import build_detector
from fad.utils.device import resolve_device
from fad.utils.io import atomic_write_text
from fad.utils.seed import seed_everything


def argument_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config-file", default="", metavar="FILE", help="yaml config")
    parser.add_argument("--genotype-file", default="", metavar="FILE",
                        help="genotype.log from tools/search_net.py: build FCOS with the searched towers")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides, e.g. SOLVER.MAX_ITER 100 OUTPUT_DIR out")
    return parser


def setup(args: argparse.Namespace):
    """Config (frozen), process group, logger, seed and device of a tool run."""
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    init_distributed()
    rank = get_rank()
    logger = setup_logger(cfg.OUTPUT_DIR, rank)
    seed_everything(cfg.SEED + rank if cfg.SEED >= 0 else cfg.SEED)
    if rank == 0:
        atomic_write_text(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), cfg.dump())
    logger.info("config: %s%s", args.config_file or "(defaults)",
                f" + {' '.join(args.opts)}" if args.opts else "")
    if cfg.MODEL.MSDA_BACKEND:
        from fad.ops import set_msda_backend

        set_msda_backend(cfg.MODEL.MSDA_BACKEND)
    return cfg, logger, resolve_device(cfg)


def read_genotype_text(path: str) -> str:
    """The text of a genotype file (a clear error when it is missing)."""
    if not os.path.isfile(path):
        raise SystemExit(f"error: genotype file {path} does not exist; run tools/search_net.py "
                         "first or use configs/fad/genotypes/fad_paper.log")
    with open(path, encoding="utf-8") as f:
        return f.read()


def build_model(cfg, num_classes: int, genotype_file: str = ""):
    """The configured detector; with a genotype file, FCOS with the FAD searched towers."""
    if genotype_file:
        if cfg.MODEL.META_ARCHITECTURE != "FCOS":
            raise SystemExit("error: --genotype-file needs MODEL.META_ARCHITECTURE FCOS, got "
                             f"{cfg.MODEL.META_ARCHITECTURE}")
        from fad.augment import build_fad_fcos

        return build_fad_fcos(cfg, num_classes, genotype_file)
    return build_detector(cfg, num_classes)


def run_tool(main: Callable[[], None]) -> None:
    """Run a tool's `main`; bad input (data, genotype, checkpoint, results) exits with one line."""
    from fad.nas.genotype import GenotypeError

    try:
        main()
    except (DataError, EvalError, GenotypeError, CheckpointError, FileNotFoundError) as exc:
        lines = str(exc).strip().splitlines()  # loader workers prepend their traceback
        print(f"error: {lines[-1] if lines else type(exc).__name__}", file=sys.stderr)
        sys.exit(2)
