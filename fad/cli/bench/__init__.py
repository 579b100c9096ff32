"""Benchmarks: `fad-bench NAME [--json FILE] [options]` (also `python tools/benchmark.py`).

  fcos_step      one FCOS training step: ours vs torchvision's fcos_resnet50_fpn
  demo_step      the demo's augment training step vs the limit its FLOPs set on this machine
  supernet       FAD search towers: representation sharing vs the candidates as separate ops
  msda           MSDA forward+backward: every available backend vs the grid_sample reference
  sparse_resnet  SparseResNet: dense-masked vs sparse execution vs plain ResNet, and GMACs
  detr_flops     FLOPs and CPU latency: Sparse DETR vs the Deformable DETR baseline
  op_latency     latency table of the FAD candidates for a cost-aware search
  asag           ASAG head: queries, GMACs and CPU latency vs Deformable DETR
  triton_resources  Triton MSDA kernels: registers, spills, occupancy per specialization (compiles)
  export         deployment formats (eager, torch.compile, ONNX Runtime, pt2): size, AP, latency
  compile        SOLVER.COMPILE: CPU training step time of FCOS, torch.compile'd vs eager
  limits         issue #24's table: each speed-up against its FLOP limit and goal, in one run

Each is a module of this package, `fad.cli.bench.NAME` (`add_arguments(parser)`,
`run(args) -> dict`), imported only when it is the one run; it times its candidates side by side
in one process (`fad.cli.bench.timing`) and prints one JSON line (also written to `--json FILE`).
`fad-bench NAME --help` explains its options and keys.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from fad.engine.tool import run_command, tool_parser
from fad.errors import FadError
from fad.utils.io import atomic_write_text
from fad.utils.registry import Registry

BENCHMARKS = Registry("benchmark", FadError, {
    name: f"{__name__}.{name}" for name in (
        "fcos_step", "demo_step", "supernet", "msda", "sparse_resnet", "detr_flops",
        "op_latency", "asag", "triton_resources", "export", "compile", "limits")})


def build_parser(command: str | None) -> argparse.ArgumentParser:
    """The `fad-bench` parser; only the sub-command `command` (if known) gets its options, so
    only its module is imported."""
    parser = tool_parser(__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="NAME",
                                help=f"the benchmark: {', '.join(BENCHMARKS.names())}")
    for name in BENCHMARKS.names():
        p = sub.add_parser(name, formatter_class=parser.formatter_class)
        if name == command:
            module = BENCHMARKS.get(name)
            p.description = module.__doc__
            p.add_argument("--json", default="", metavar="FILE", help="also write the result here")
            module.add_arguments(p)
            p.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Parse `argv`, run the chosen benchmark and print its JSON line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    result = {"benchmark": args.command, **args.run(args)}
    line = json.dumps(result)
    print(line)
    if args.json:
        atomic_write_text(args.json, line + "\n")


def run() -> None:
    """The `fad-bench` console command (also `python tools/benchmark.py`)."""
    run_command(main)
