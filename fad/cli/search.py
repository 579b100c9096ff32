"""FAD search: `fad-search --config-file CFG [--resume | --overwrite] [KEY VALUE ...]`.

Runs on one GPU, on the CPU, or under `torchrun --nproc_per_node N` (alphas stay identical
across ranks). Writes to OUTPUT_DIR: genotype.log (box line, cls line) and the diagrams
genotype_box.gv / genotype_cls.gv (+ .png when graphviz's `dot` exists) at every
SOLVER.CHECKPOINT_PERIOD and at the end, genotype_cost.json beside them (the derived head's
FLOPs counted on its augment head, the expected cost and the MODEL.FAD.COST target),
checkpoints (`--resume` continues from the last one), tensorboardX logs under tb/ and log.txt.
Train the searched detector next with `fad-train --genotype-file OUTPUT_DIR/genotype.log`
(tools/train_net.py).
"""
from __future__ import annotations

import os
from collections.abc import Sequence

from fad.engine.launch import default_argument_parser, parse_args, setup
from fad.engine.tool import run_command
from fad.search import run_search


def main(argv: Sequence[str] | None = None) -> None:
    """Parse `argv` and run (or resume) the search."""
    parser = default_argument_parser(__doc__, resumable=True)
    args = parse_args(parser, argv)
    cfg, logger, device = setup(args)
    run_search(cfg, device, resume=args.resume)
    logger.info("search done: %s", os.path.join(cfg.OUTPUT_DIR, "genotype.log"))


def run() -> None:
    """The `fad-search` console command (also `python tools/search_net.py`)."""
    run_command(main)
