"""FAD search: `python tools/search_net.py --config-file CFG [--resume] [KEY VALUE ...]`.

Runs on one GPU, on the CPU, or under `torchrun --nproc_per_node N` (alphas stay identical
across ranks). Writes to OUTPUT_DIR: genotype.log (box line, cls line) and the diagrams
genotype_box.gv / genotype_cls.gv (+ .png when graphviz's `dot` exists) at every
SOLVER.CHECKPOINT_PERIOD and at the end, checkpoints (`--resume` continues from the last one),
tensorboardX logs under tb/ and log.txt. Train the searched detector next with
`tools/train_net.py --genotype-file OUTPUT_DIR/genotype.log`.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import setup  # noqa: E402

from fad.search import run_search  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="", metavar="FILE", help="yaml config")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUTPUT_DIR/last_checkpoint")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides, e.g. SOLVER.MAX_ITER 100 OUTPUT_DIR out")
    args = parser.parse_args()
    cfg, logger, device = setup(args)
    run_search(cfg, device, resume=args.resume)
    logger.info("search done: %s", os.path.join(cfg.OUTPUT_DIR, "genotype.log"))


if __name__ == "__main__":
    main()
