"""The one start-up of every command-line tool: arguments, setup and the error path.

    parser = default_argument_parser(__doc__)          # --config-file, KEY VALUE overrides
    parser.add_argument("--resume", action="store_true")
    args = parse_args(parser)                          # flags before or after the overrides
    cfg, logger, device = setup(args)                  # config, process group, log, seed, device
    ...
    if __name__ == "__main__":
        run_tool(main)                                 # FadError -> "error: ..." and exit 2
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Sequence

import torch
from yacs.config import CfgNode

from fad.config import load_config
from fad.errors import FadError
from fad.utils.device import resolve_device
from fad.utils.io import atomic_write_text
from fad.utils.seed import seed_everything

from .distributed import get_rank, init_distributed
from .logger import setup_logger

EXIT_BAD_INPUT = 2


def tool_parser(description: str | None) -> argparse.ArgumentParser:
    """The parser every tool starts from: the module docstring as help, kept as written."""
    return argparse.ArgumentParser(description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def default_argument_parser(description: str | None,
                            genotype_file: bool = False) -> argparse.ArgumentParser:
    """`--config-file FILE` and `KEY VALUE` config overrides (plus `--genotype-file` if asked)."""
    parser = tool_parser(description)
    parser.add_argument("--config-file", default="", metavar="FILE",
                        help="yaml config (may name a `_BASE_: other.yaml` it extends)")
    if genotype_file:
        parser.add_argument("--genotype-file", default="", metavar="FILE",
                            help="genotype.log from tools/search_net.py: build FCOS with the "
                                 "searched towers")
    parser.add_argument("opts", nargs="*", default=[], metavar="KEY VALUE",
                        help="config overrides, e.g. SOLVER.MAX_ITER 100 OUTPUT_DIR out; flags "
                             "may come before or after them")
    return parser


def parse_args(parser: argparse.ArgumentParser,
               argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse `argv` (default sys.argv[1:]) with flags and `KEY VALUE` overrides in any order."""
    return parser.parse_intermixed_args(argv)


def _configure_ops(cfg: CfgNode) -> None:
    """Apply the op backends of the config (MODEL.OPS.*; FAD_<OP>_BACKEND variables override)."""
    from fad.ops import configure_backends

    configure_backends(cfg)


def setup(args: argparse.Namespace) -> tuple[CfgNode, logging.Logger, torch.device]:
    """Config (frozen), process group, logger, seed, op backends and device of a tool run.

    Writes the merged config to OUTPUT_DIR/config.yaml on the main rank.
    """
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
    _configure_ops(cfg)
    return cfg, logger, resolve_device(cfg)


def error_line(exc: BaseException) -> str:
    """`error: <last line of the message>` (loader workers prepend their traceback)."""
    lines = str(exc).strip().splitlines()
    return f"error: {lines[-1] if lines else type(exc).__name__}"


def _log_to_files(line: str) -> None:
    """Append `line` to the log files of the "fad" logger (OUTPUT_DIR/log.txt) if it has any."""
    logger = logging.getLogger("fad")
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, line, None, None)
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def run_tool(main: Callable[[], object]) -> None:
    """Run a tool's `main`; bad input (any FadError) ends it with one line on stderr, also
    written to OUTPUT_DIR/log.txt once the logger is set up, and exit code 2."""
    try:
        main()
    except FadError as exc:
        line = error_line(exc)
        _log_to_files(line)
        print(line, file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
