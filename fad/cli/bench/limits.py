"""Issue #24's table in one command: each speed-up against its goal, run side by side in turn.

Runs `sparse_resnet`, `supernet`, `msda`, `fcos_step` and `demo_step` one after another, each
in a process of its own (`fad-bench NAME ... --json FILE`: no thread count, allocator policy,
kernel buffer or cache of one benchmark reaches the next), with the arguments its row in
docs/BENCHMARKS.md names (`--set NAME=ARGS` replaces them, all checked before the first run;
`--only` picks benchmarks), reads the load average before and after each, and turns their JSON
into one row per measured ratio:

- `sparse_resnet` per density and thread count: speed-up vs plain R-101, the limit its FLOPs set
  (`theory_speedup_vs_plain_at_density_<d>`) and `fraction_of_limit`; goal fraction >= 0.9;
- `supernet`: speed-up of representation sharing, the FLOP ratio, fraction; goal fraction
  >= 0.95;
- `msda`: the kernel (C++ on the CPU) vs reference, forward + backward, goal >= 15; and the
  backward's speed-up over the forward's, goal >= 1 (the backward as fast, relative to the
  reference, as the forward);
- `fcos_step`: ours / torchvision step time, goal <= 0.85 (its `fraction_of_limit` informs);
- `demo_step`: the demo's augment step at `fraction_of_limit` of its FLOP limit (no goal).

`--rounds R` runs the whole sequence R times (the benchmarks alternate, so a slow phase of the
machine touches every row alike); each row then reports the medians over the rounds, judged
again, with every round's values. This host's speed drifts by 10-25 % within minutes, so one
round can move a row across its goal.

Prints the rows as a markdown table, then (as every benchmark) one JSON line: `rows` (each with
`row`, `measured`, `limit`, `fraction_of_limit`, `goal`, `met`, `rounds_measured`,
`rounds_fraction`, `load`), `goals_met` / `goals`, `rounds` and `results` (every benchmark's own
JSON, one per round).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable

from fad.errors import FadError

ARGS = {
    "sparse_resnet": "--densities 0.3,0.5,0.2 --repeats 3",
    "supernet": "--repeats 3 --tiny-config ''",
    "msda": "--repeats 5",
    "fcos_step": "--repeats 3",
    "demo_step": "--repeats 5",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--only", default=",".join(ARGS),
                        help=f"comma-separated benchmarks to run (default all: {', '.join(ARGS)})")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the whole sequence this many times; each row reports the "
                             "medians and the rounds' range (default 1)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=ARGS",
                        help="replace a benchmark's arguments, e.g. "
                             "--set 'sparse_resnet=--size 320x512 --repeats 1' (repeatable)")


def _arguments(args: argparse.Namespace) -> dict[str, list[str]]:
    """Each chosen benchmark's argument list, defaults replaced by `--set`."""
    if args.rounds < 1:
        raise FadError(f"--rounds must be >= 1, got {args.rounds}")
    chosen = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in ARGS]
    if unknown or not chosen:
        raise FadError(f"--only: unknown benchmark(s) {unknown or args.only!r}; "
                       f"choose among {', '.join(ARGS)}")
    argv = {name: shlex.split(ARGS[name]) for name in chosen}
    for item in args.set:
        name, sep, text = item.partition("=")
        if not sep or name not in argv:
            raise FadError(f"--set {item!r}: must be NAME=ARGS with NAME among {', '.join(argv)}")
        argv[name] = shlex.split(text)
    return argv


def _judge(goal: str, measured: float, fraction: float | None) -> bool | None:
    """Whether a row meets `goal`: 'fraction >= X' (on the fraction of the limit), '>= X' or
    '<= X' (on the measured value); None for no goal ('')."""
    if not goal:
        return None
    *on, op, threshold = goal.split()
    value = fraction if on == ["fraction"] else measured
    return value >= float(threshold) if op == ">=" else value <= float(threshold)


def _row(row: str, measured: float, goal: str, limit: float | None = None,
         fraction: float | None = None) -> dict:
    """One table row of one run, judged against `goal` (`_judge`)."""
    return {"row": row, "measured": measured, "limit": limit, "fraction_of_limit": fraction,
            "goal": goal, "met": _judge(goal, measured, fraction)}


def _median(values: list[float | None]) -> float | None:
    """The median, rounded to 4 digits; None when any value is None."""
    if any(v is None for v in values):
        return None
    return round(statistics.median(values), 4)


def combine(runs: list[dict]) -> dict:
    """One row from the same row of every round: median measured value, limit and fraction,
    judged again; `rounds_measured` / `rounds_fraction` list each round's, `load` each round's
    load before -> after."""
    first = runs[0]
    measured = _median([r["measured"] for r in runs])
    fraction = _median([r["fraction_of_limit"] for r in runs])
    return {"row": first["row"], "measured": measured,
            "limit": _median([r["limit"] for r in runs]), "fraction_of_limit": fraction,
            "goal": first["goal"], "met": _judge(first["goal"], measured, fraction),
            "rounds_measured": [r["measured"] for r in runs],
            "rounds_fraction": [r["fraction_of_limit"] for r in runs],
            "load": ", ".join(r["load"] for r in runs)}


def _sparse_rows(r: dict) -> list[dict]:
    densities = [k.rsplit("_", 1)[1] for k in r if k.startswith("theory_speedup_vs_plain_")]
    return [_row(f"sparse_resnet vs plain R-{r['depth']}, density {d}, "
                 f"{t} thread{'s' * (t > 1)}",
                 r[f"speedup_vs_plain_at_density_{d}_threads_{t}"], "fraction >= 0.9",
                 r[f"theory_speedup_vs_plain_at_density_{d}"],
                 r[f"fraction_of_limit_at_density_{d}_threads_{t}"])
            for d in densities for t in sorted(r["threads"], reverse=True)]


def _msda_rows(r: dict) -> list[dict]:
    backend = r["backends"][0]
    return [_row(f"msda, {backend} kernel vs reference, forward + backward", r["speedup"],
                 ">= 15"),
            _row(f"msda, {backend} backward's speed-up / forward's",
                 round(r[f"backward_speedup_{backend}"] / r[f"forward_speedup_{backend}"], 3),
                 ">= 1")]


ROWS: dict[str, Callable[[dict], list[dict]]] = {
    "sparse_resnet": _sparse_rows,
    "supernet": lambda r: [_row("supernet, shared vs separate candidates", r["speedup"],
                                "fraction >= 0.95", r["flop_ratio"], r["fraction_of_limit"])],
    "msda": _msda_rows,
    "fcos_step": lambda r: [_row("fcos_step, ours / torchvision step time", r["time_ratio"],
                                 "<= 0.85", None, r["fraction_of_limit"])],
    "demo_step": lambda r: [_row("demo_step, the demo's augment step (s)", r["step_s"], "",
                                 r["limit_step_s"], r["fraction_of_limit"])],
}


def markdown(rows: list[dict]) -> str:
    """The rows as a markdown table (limit and fraction '-' where there is none; with more than
    one round, each median followed by the rounds' range)."""
    def cell(value: object, rounds: list | None = None) -> str:
        if value is None or value == "":
            return "-"
        if rounds and len(rounds) > 1:
            return f"{value} ({min(rounds)}-{max(rounds)})"
        return str(value)

    lines = ["| benchmark | measured | limit | fraction of limit | goal | met | load |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['row']} | {cell(r['measured'], r['rounds_measured'])} | "
              f"{cell(r['limit'])} | {cell(r['fraction_of_limit'], r['rounds_fraction'])} | "
              f"{cell(r['goal'])} | {cell({True: 'yes', False: 'no'}.get(r['met']))} | "
              f"{r['load']} |" for r in rows]
    return "\n".join(lines)


def _run_alone(name: str, argv: list[str]) -> dict:
    """Benchmark `name` with `argv` in a new Python process; its JSON result (its stderr goes
    to ours; a failure is a FadError naming its exit code)."""
    with tempfile.TemporaryDirectory(prefix="fad-limits-") as folder:
        out = os.path.join(folder, f"{name}.json")
        command = [sys.executable, "-c", "from fad.cli.bench import run; run()",
                   name, *argv, "--json", out]
        code = subprocess.run(command, stdout=subprocess.DEVNULL).returncode
        if code != 0:
            raise FadError(f"limits: `fad-bench {name} {shlex.join(argv)}` failed "
                           f"(exit code {code}; its error is above)")
        with open(out) as f:
            return json.load(f)


def run(args: argparse.Namespace) -> dict:
    """Each chosen benchmark in turn, `--rounds` times; its rows judged on the medians; the
    markdown table printed."""
    from . import build_parser  # the package imports its sub-commands' modules lazily

    arguments = _arguments(args)
    for name, argv in arguments.items():  # a bad argument fails now, not after minutes
        build_parser(name).parse_args([name, *argv])
    per_round: list[list[dict]] = []
    results: dict[str, list[dict]] = {name: [] for name in arguments}
    for _ in range(args.rounds):
        rows = []
        for name, argv in arguments.items():
            before = os.getloadavg()[0]
            results[name].append(_run_alone(name, argv))
            load = f"{before:.1f} -> {os.getloadavg()[0]:.1f}"
            rows += [row | {"load": load} for row in ROWS[name](results[name][-1])]
        per_round.append(rows)
    rows = [combine(list(same)) for same in zip(*per_round)]
    print(markdown(rows), flush=True)
    judged = [r["met"] for r in rows if r["met"] is not None]
    return {"rows": rows, "goals_met": sum(judged), "goals": len(judged), "rounds": args.rounds,
            "arguments": {n: shlex.join(a) for n, a in arguments.items()},
            "results": results}
