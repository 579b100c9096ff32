"""Benchmarks: `python tools/benchmark.py NAME [--json FILE] [options]`.

Each sub-command lives in `tools/bench/NAME.py` (`add_arguments(parser)`, `run(args) -> dict`),
measures its ratios side by side in one process, and prints one JSON line (also written to
`--json FILE`). Sub-commands: fcos_step, supernet, msda, sparse_resnet, detr_flops.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fad.utils.io import atomic_write_text  # noqa: E402

COMMANDS = ["fcos_step", "supernet", "msda", "sparse_resnet", "detr_flops"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"bench.{name}":
                raise
            continue
        p = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        p.add_argument("--json", default="", metavar="FILE", help="also write the result here")
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    args = parser.parse_args()
    result = {"benchmark": args.command, **args.run(args)}
    line = json.dumps(result)
    print(line)
    if args.json:
        atomic_write_text(args.json, line + "\n")


if __name__ == "__main__":
    main()
