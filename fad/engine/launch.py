"""The one start-up of every command-line tool: arguments, setup and the error path.

    parser = default_argument_parser(__doc__, resumable=True)  # --config-file, KEY VALUE
    args = parse_args(parser)              # overrides, --resume, --overwrite, in any order
    cfg, logger, device = setup(args)      # config, process group, log, seed, device
    ...
    if __name__ == "__main__":
        run_tool(main)                     # FadError -> "error: ..." and exit 2

`setup` checks before any work that OUTPUT_DIR is writable and that every DATASETS.TRAIN/TEST
name is in the catalog, and sets the intra-op threads (NUM_THREADS; 0 = torch's default, or 1
while the machine is busy: `fad.engine.threads`, re-checked at every log line). Tools that
write a run (`default_argument_parser(..., resumable=True)`: train, search) get `--resume` and
`--overwrite`, and `setup` refuses an OUTPUT_DIR holding checkpoints without one of them
(`fad.engine.output_dir`); when torchrun restarts the worker group (TORCHELASTIC_RESTART_COUNT
> 0, after a worker died) they resume by themselves, whatever the command line says.
`run_tool` exits 130/143 after a Ctrl-C/SIGTERM stop.
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
from collections.abc import Sequence

import torch
from yacs.config import CfgNode

from fad.config import load_config
from fad.config.catalog import check_dataset_names
from fad.errors import ConfigError
from fad.modeling.fcos import resolve_genotype
from fad.utils.device import resolve_device
from fad.utils.io import atomic_write_text
from fad.utils.seed import seed_everything

from .distributed import elastic_restart, get_rank, init_distributed, synchronize
from .logger import setup_logger
from .output_dir import check_run_folder, clear_run_files
from .threads import set_num_threads
from .tool import add_verbose_flag, tool_parser


def default_argument_parser(description: str | None, genotype_file: bool = False,
                            resumable: bool = False) -> argparse.ArgumentParser:
    """`--config-file FILE` and `KEY VALUE` config overrides (plus `--genotype-file` if asked;
    plus `--resume` / `--overwrite` for a tool that writes a run into OUTPUT_DIR if
    `resumable`)."""
    parser = tool_parser(description)
    parser.add_argument("--config-file", default="", metavar="FILE",
                        help="yaml config (may name a `_BASE_: other.yaml` it extends)")
    if genotype_file:
        parser.add_argument("--genotype-file", default="", metavar="FILE",
                            help="genotype.log from tools/search_net.py: build FCOS with the "
                                 "searched towers (sets MODEL.FAD.GENOTYPE)")
    if resumable:
        run = parser.add_mutually_exclusive_group()
        run.add_argument("--resume", action="store_true",
                         help="continue from OUTPUT_DIR/last_checkpoint")
        run.add_argument("--overwrite", action="store_true",
                         help="delete the files of an earlier run in OUTPUT_DIR (checkpoints, "
                              "logs, tb/, inference/, genotypes; nothing else) and start again")
    add_verbose_flag(parser)
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


def check_output_dir(path: str) -> None:
    """OUTPUT_DIR must be a folder this process can create files in (made when missing)."""
    folder = path or "."
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ConfigError(f"OUTPUT_DIR {path} is not a writable folder ({exc.strerror}); "
                          "give another one with OUTPUT_DIR PATH") from None


def setup(args: argparse.Namespace, config_name: str = "config.yaml"
          ) -> tuple[CfgNode, logging.Logger, torch.device]:
    """Config (frozen), process group, logger, seed, threads, op backends and device of a run.

    Before any work: OUTPUT_DIR must be writable, hold no checkpoints of an earlier run unless
    the tool is not `resumable` or `args.resume` / `args.overwrite` is set (an elastic restart
    under torchrun sets `args.resume` and clears `args.overwrite`), and the dataset
    names must be known (one-line ConfigError). With `args.overwrite` the main rank deletes the
    earlier run's files first (the others wait). Writes the merged config to
    OUTPUT_DIR/`config_name` on the main rank (fad-test / fad-demo: their own name, so that a
    training run's config.yaml in the same folder stays).
    """
    cfg = load_config(args.config_file, args.opts)
    resolve_genotype(cfg, getattr(args, "genotype_file", ""))  # the text, for config.yaml
    cfg.freeze()
    check_output_dir(cfg.OUTPUT_DIR)
    resumable = hasattr(args, "overwrite")
    restart = elastic_restart() if resumable else 0
    if restart:  # torchrun relaunched the group after a worker died: continue the same run
        args.resume, args.overwrite = True, False
    if resumable:
        check_run_folder(cfg.OUTPUT_DIR, args.resume, args.overwrite)
    check_dataset_names(cfg, (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST))
    threads = set_num_threads(cfg.NUM_THREADS)
    init_distributed()
    rank = get_rank()
    deleted = clear_run_files(cfg.OUTPUT_DIR) if resumable and args.overwrite and rank == 0 else []
    synchronize()
    logger = setup_logger(cfg.OUTPUT_DIR, rank, verbose=getattr(args, "verbose", False))
    if restart:
        logger.warning("torchrun restart %d of the worker group: resuming from the last "
                       "checkpoint in %s (as --resume)", restart, cfg.OUTPUT_DIR)
    if deleted:
        logger.info("--overwrite: deleted the %d files of the earlier run in %s", len(deleted),
                    cfg.OUTPUT_DIR)
    seed_everything(cfg.SEED + rank if cfg.SEED >= 0 else cfg.SEED)
    if rank == 0:
        atomic_write_text(os.path.join(cfg.OUTPUT_DIR, config_name), cfg.dump())
    logger.info("config: %s%s", args.config_file or "(defaults)",
                f" + {' '.join(args.opts)}" if args.opts else "")
    logger.info("threads: %s", threads)
    _configure_ops(cfg)
    return cfg, logger, resolve_device(cfg)
