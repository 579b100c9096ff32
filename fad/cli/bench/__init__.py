"""Benchmarks: `fad-bench NAME [--json FILE] [options]` (also `python tools/benchmark.py`).

Each sub-command is a module of this package, `fad.cli.bench.NAME` (`add_arguments(parser)`,
`run(args) -> dict`), measures its ratios side by side in one process, and prints one JSON line
(also written to `--json FILE`). Sub-commands: fcos_step, supernet, msda, sparse_resnet,
detr_flops, op_latency, asag.
"""
from __future__ import annotations

import importlib
import json
from collections.abc import Sequence

from fad.engine.launch import run_tool, tool_parser
from fad.utils.io import atomic_write_text

COMMANDS = ["fcos_step", "supernet", "msda", "sparse_resnet", "detr_flops", "op_latency",
            "asag"]


def main(argv: Sequence[str] | None = None) -> None:
    """Parse `argv`, run the chosen benchmark and print its JSON line."""
    parser = tool_parser(__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"{__name__}.{name}")
        p = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        p.add_argument("--json", default="", metavar="FILE", help="also write the result here")
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    result = {"benchmark": args.command, **args.run(args)}
    line = json.dumps(result)
    print(line)
    if args.json:
        atomic_write_text(args.json, line + "\n")


def run() -> None:
    """The `fad-bench` console command (also `python tools/benchmark.py`)."""
    run_tool(main)
