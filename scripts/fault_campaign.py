"""The fault campaign of docs/RELIABILITY.md: run the tools on tiny configs, hit them with a
fault, run them again with `--resume`, and count what survived.

    python scripts/fault_campaign.py [--trials 30] [--worker-trials 10] [--out DIR] [--jobs N]
                                     [--torchrun-trials 5] [--bad-data-trials 1]
                                     [--first-trial N] [--only NAME ...]

prints one table: fault | trials | survived | lost steps (mean / max) | bit-identical finish.
`scripts/fault_campaign.sh` runs it with the full counts; tests/test_faults_*.py import it and
run a few trials. Each fault is a function in FAULTS (name -> function(trial, ctx) -> Trial).
The faults under torchrun (a killed rank, two agents) are in scripts/fault_torchrun.py.

A trial "survived" when the resumed command exits 0 from the last complete checkpoint, and is
"bit-identical" when its model_final.pth weights (and genotype.log, for the search) equal those
of an uninterrupted run of the same command. "Lost steps": iterations finished before the fault
minus the iteration the resume started from.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
SMALL = ["MODEL.DEVICE", "cpu", "NUM_THREADS", "1", "SOLVER.MAX_ITER", "6",
         "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.LOG_PERIOD", "1", "SOLVER.WARMUP_ITERS", "2",
         "SOLVER.STEPS", "(4,)", "SOLVER.IMS_PER_BATCH", "2",
         "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128",
         "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128"]
TOOLS = {  # tool -> (script, config, extra overrides)
    "train": ("tools/train_net.py", "configs/fcos/fcos_tiny_synthetic.yaml",
              ["MODEL.FPN.OUT_CHANNELS", "32", "MODEL.FCOS.NUM_CONVS", "1",
               "TEST.IMS_PER_BATCH", "4"]),
    "search": ("tools/search_net.py", "configs/fad/search/fad-fcos_tiny_synthetic.yaml",
               ["MODEL.FPN.OUT_CHANNELS", "32", "MODEL.FAD.TOWER_CHANNELS", "32",
                "MODEL.FAD.EDGE_CHANNELS", "16"]),
}
MAX_ITER = int(SMALL[SMALL.index("SOLVER.MAX_ITER") + 1])
STARTED = re.compile(r"start \S+ at iteration \d+ of")  # the trainer's line before the 1st step
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


@dataclass
class Trial:
    """One fault and its resume: did it finish, how many iterations were lost, same bits?"""

    survived: bool
    lost_steps: int
    identical: bool
    note: str = ""


@dataclass
class Context:
    """What every trial needs: the data root, a scratch folder, and the reference weights of
    uninterrupted runs (made once per tool and worker count)."""

    root: str
    work: str
    references: dict[tuple[str, int], tuple[str, float, float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def command(tool: str, out: str, root: str, workers: int = 0, resume: bool = False) -> list[str]:
    """The command line of `tool` ('train' or 'search') on the tiny config into `out`."""
    script, config, extra = TOOLS[tool]
    return [PY, os.path.join(REPO, script), "--config-file", os.path.join(REPO, config),
            *(["--resume"] if resume else []), "DATASETS.ROOT", root, "OUTPUT_DIR", out,
            *SMALL, *extra, "DATALOADER.NUM_WORKERS", str(workers)]


def run(cmd: list[str], timeout: float = 600,
        preexec: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
    """`cmd` to the end, output captured."""
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout,
                          preexec_fn=preexec)


def run_logged(cmd: list[str], log: str) -> tuple[subprocess.Popen, float | None]:
    """Start `cmd` in its own process group, output to the file `log`, and wait until the
    trainer's first-step line (STARTED) is there: (process, seconds until then; None when the
    process ended first)."""
    start = time.time()
    with open(log, "w") as f:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=ENV,
                                start_new_session=True)
    while proc.poll() is None:
        with open(log) as f:
            if STARTED.search(f.read()):
                return proc, time.time() - start
        time.sleep(0.02)
    return proc, None


def reference(ctx: Context, tool: str, workers: int) -> tuple[str, float, float]:
    """(output folder, seconds, seconds of its start-up) of an uninterrupted run of `tool`,
    made once; the start-up ends at the trainer's line before the first step."""
    key = (tool, workers)
    with ctx.lock:
        if key in ctx.references:
            return ctx.references[key]
        out = os.path.join(ctx.work, f"reference_{tool}_{workers}")
        shutil.rmtree(out, ignore_errors=True)
        start = time.time()
        proc, startup = run_logged(command(tool, out, ctx.root, workers), f"{out}.log")
        if proc.wait() != 0 or startup is None:
            with open(f"{out}.log") as f:
                raise RuntimeError(f"reference {tool} run failed: {f.read()[-2000:]}")
        ctx.references[key] = (out, time.time() - start, startup)
        return ctx.references[key]


def same_finish(out: str, ref: str) -> bool:
    """model_final.pth weights (and genotype.log when the reference has one) equal bit for bit."""
    a = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)["model"]
    b = torch.load(os.path.join(ref, "model_final.pth"), weights_only=True)["model"]
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    genotype = os.path.join(ref, "genotype.log")
    if os.path.exists(genotype):
        with open(genotype) as f, open(os.path.join(out, "genotype.log")) as g:
            same = same and f.read() == g.read()
    return same


def finished_iterations(log: str) -> int:
    """The last iteration a log reached ("iter: N/M" lines; 0 when none)."""
    found = re.findall(r"iter: (\d+)/", log)
    return int(found[-1]) if found else 0


def resume_and_check(ctx: Context, tool: str, workers: int, out: str, reached: int) -> Trial:
    """Run `tool` again with --resume in `out`; compare its finish with the reference."""
    done = run(command(tool, out, ctx.root, workers, resume=True))
    if done.returncode != 0:
        return Trial(False, reached, False, done.stderr.strip().splitlines()[-1:][0]
                     if done.stderr.strip() else f"exit {done.returncode}")
    start = re.search(r"resumed from \S+ at iteration (\d+)", done.stdout)
    if start:
        resumed = int(start.group(1))
    elif "already finished" in done.stdout:
        resumed = MAX_ITER
    else:
        resumed = 0
    ref = reference(ctx, tool, workers)[0]
    return Trial(True, max(reached - resumed, 0), same_finish(out, ref))


def kill_at_random(ctx: Context, tool: str, workers: int, rng: random.Random, name: str,
                   after_startup: bool = False, draws: int = 3) -> Trial:
    """SIGKILL the tool's whole process group (loader workers too) at a random instant, then
    resume. The instant is uniform over an uninterrupted run's duration (start-up, steps,
    checkpoint writes, evaluation), or with `after_startup` over the part after its start-up
    (counted from the line before the first step: the loader workers exist then). A run faster
    than the reference can end before its instant, which tests no kill: the run starts again
    with the next instant, up to `draws` instants. The trial's note says where the kill
    landed."""
    _, seconds, startup = reference(ctx, tool, workers)
    out = os.path.join(ctx.work, name)
    log = os.path.join(ctx.work, f"{name}.log")
    where = "not killed: the run ended first"
    for _ in range(draws):
        shutil.rmtree(out, ignore_errors=True)
        if after_startup:
            delay = rng.uniform(0.05, seconds - startup)
            proc, _ = run_logged(command(tool, out, ctx.root, workers), log)
        else:
            delay = rng.uniform(0.1, seconds)
            with open(log, "w") as f:
                proc = subprocess.Popen(command(tool, out, ctx.root, workers), stdout=f,
                                        stderr=subprocess.STDOUT, env=ENV,
                                        start_new_session=True)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            where = None
            break
    with open(log) as f:
        text = f.read()
    reached = finished_iterations(text)
    if where is None:
        where = ("killed in the start-up" if not STARTED.search(text) else
                 "killed after the last step (final save, evaluation)" if reached == MAX_ITER
                 else f"killed in the steps, after iteration {reached}")
    trial = resume_and_check(ctx, tool, workers, out, reached)
    trial.note = where + (f"; {trial.note}" if trial.note else "")
    return trial


# Injected kills at the risky instants of a checkpoint save (fad.engine.checkpoint.Checkpointer
# .save): half-way through the checkpoint's bytes, after the checkpoint before its record, after
# the record before the pointer. The child patches the save, then runs the tool.
INJECT = """
import os, runpy, signal, sys
sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[3]))  # the tool's folder, not the cwd
import fad.utils.io as io
import fad.engine.checkpoint as ck
where, nth = sys.argv[1], int(sys.argv[2])
count = [0]
def die():
    os.kill(os.getpid(), signal.SIGKILL)
write, text = io._HashingWriter.write, ck.atomic_write_text
def bytes_kill(self, data):
    if self.size == 0:
        count[0] += 1
    if count[0] == nth and self.size > 0:
        die()
    return write(self, data)
def text_kill(path, data):
    is_record = path.endswith(ck.RECORD)
    if is_record:
        count[0] += 1
    if count[0] == nth and is_record == (where == "record"):
        die()
    return text(path, data)
if where == "bytes":
    io._HashingWriter.write = bytes_kill
else:
    ck.atomic_write_text = text_kill
sys.argv = sys.argv[3:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def kill_in_save(ctx: Context, tool: str, where: str, nth: int, name: str) -> Trial:
    """SIGKILL inside the `nth` checkpoint save at `where` ('bytes', 'record', 'pointer'),
    then resume."""
    out = os.path.join(ctx.work, name)
    shutil.rmtree(out, ignore_errors=True)
    cmd = command(tool, out, ctx.root)
    killed = run([PY, "-c", INJECT, where, str(nth), *cmd[1:]])
    if killed.returncode != -signal.SIGKILL:
        return Trial(False, 0, False, f"not killed (exit {killed.returncode})")
    leftovers = [n for n in os.listdir(out) if n.startswith(".tmp-")]
    trial = resume_and_check(ctx, tool, 0, out, finished_iterations(killed.stdout))
    trial.note = f"{len(leftovers)} temporary file(s) of the killed write" if leftovers else ""
    return trial


def _random_kills(tool: str, workers: int) -> Callable[[int, Context], Trial]:
    def fault(trial: int, ctx: Context) -> Trial:
        rng = random.Random(f"{tool}{workers}{trial}")
        return kill_at_random(ctx, tool, workers, rng, f"kill_{tool}_{workers}_{trial}",
                              after_startup=True)
    return fault


def _save_kills(tool: str) -> Callable[[int, Context], Trial]:
    def fault(trial: int, ctx: Context) -> Trial:
        where = ("bytes", "record", "pointer")[trial % 3]
        nth = 1 + (trial // 3) % 3  # the checkpoints of iterations 2, 4 and the final one
        return kill_in_save(ctx, tool, where, nth, f"save_{tool}_{trial}")
    return fault


def _load_torchrun_faults():
    """scripts/fault_torchrun.py (the faults under torchrun), loaded by path."""
    spec = importlib.util.spec_from_file_location(
        "fault_torchrun", os.path.join(REPO, "scripts", "fault_torchrun.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TORCHRUN_FAULTS = _load_torchrun_faults()


def _rank_kills(tool: str) -> Callable[[int, Context], Trial]:
    def fault(trial: int, ctx: Context) -> Trial:
        return Trial(*TORCHRUN_FAULTS.rank_kill_trial(tool, trial, ctx.root, Path(ctx.work)))
    return fault


def _two_agents(trial: int, ctx: Context) -> Trial:
    return Trial(*TORCHRUN_FAULTS.two_agents_trial(trial, ctx.root, Path(ctx.work)))


def _bad_data(trial: int, ctx: Context) -> Trial:
    """One run of every bad-data case of docs/data.md (tests/test_bad_data.py): survived (and
    "bit-identical", i.e. as documented) when each gives its rule's count or its one-line
    refusal."""
    done = run([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                os.path.join(REPO, "tests", "test_bad_data.py")])
    summary = (done.stdout.strip().splitlines() or [""])[-1]
    ok = done.returncode == 0
    return Trial(ok, 0, ok, summary)


# name -> (function(trial number, ctx) -> Trial, the option that gives its number of trials)
FAULTS: dict[str, tuple[Callable[[int, Context], Trial], str]] = {
    "kill -9 train, random instant": (_random_kills("train", 0), "trials"),
    "kill -9 search, random instant": (_random_kills("search", 0), "trials"),
    "kill -9 train, 2 loader workers": (_random_kills("train", 2), "worker_trials"),
    "kill -9 search, 2 loader workers": (_random_kills("search", 2), "worker_trials"),
    "kill -9 train, inside a checkpoint save": (_save_kills("train"), "save_trials"),
    "kill -9 search, inside a checkpoint save": (_save_kills("search"), "save_trials"),
    "kill -9 of a torchrun rank, train (2 processes)": (_rank_kills("train"), "torchrun_trials"),
    "kill -9 of a torchrun rank, search (2 processes)": (_rank_kills("search"),
                                                         "torchrun_trials"),
    "two torchrun agents (--nnodes 2) vs one, train": (_two_agents, "torchrun_trials"),
    "bad data, every case of docs/data.md": (_bad_data, "bad_data_trials"),
}


def table(rows: list[tuple[str, list[Trial]]]) -> str:
    """The campaign table (markdown)."""
    lines = ["| fault | trials | survived | lost steps (mean / max) | bit-identical finish |",
             "|---|---|---|---|---|"]
    for name, trials in rows:
        lost = [t.lost_steps for t in trials if t.survived] or [0]
        lines.append(f"| {name} | {len(trials)} | {sum(t.survived for t in trials)} | "
                     f"{sum(lost) / len(lost):.1f} / {max(lost)} | "
                     f"{sum(t.identical for t in trials)} |")
    return "\n".join(lines)


def make_data(work: str) -> str:
    """The synthetic datasets (24 train, 8 val images) under `work`/data, made once."""
    root = os.path.join(work, "data")
    if not os.path.isdir(os.path.join(root, "synthetic_coco")):
        subprocess.run([PY, os.path.join(REPO, "tools", "make_synthetic_data.py"), "--out", root,
                        "--num-train", "24", "--num-val", "8", "--seed", "0"], check=True,
                       capture_output=True)
    return root


def main(argv: list[str] | None = None) -> None:
    """Run the faults named by --only (default: all) and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=30, help="random kills per tool")
    parser.add_argument("--worker-trials", type=int, default=10,
                        help="random kills per tool with 2 loader workers")
    parser.add_argument("--save-trials", type=int, default=9,
                        help="kills inside a checkpoint save per tool")
    parser.add_argument("--torchrun-trials", type=int, default=5,
                        help="kills of a random torchrun rank per tool, two-agent runs")
    parser.add_argument("--bad-data-trials", type=int, default=1,
                        help="runs of every bad-data case")
    parser.add_argument("--jobs", type=int, default=1, help="trials run side by side")
    parser.add_argument("--first-trial", type=int, default=0,
                        help="number of the first trial (each number is one random kill time: "
                             "a later run with --first-trial N adds new trials to earlier ones)")
    parser.add_argument("--out", default="output/fault_campaign", help="scratch folder")
    parser.add_argument("--only", nargs="*", default=None, help="fault names (substrings)")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    ctx = Context(make_data(args.out), os.path.abspath(args.out))
    chosen = [n for n in FAULTS if args.only is None or any(s in n for s in args.only)]
    rows = []
    for name in chosen:
        fault, count = FAULTS[name]

        def one(number: int, fault=fault, name=name) -> Trial:
            trial = fault(number, ctx)
            print(f"{name} #{number}: {trial}", file=sys.stderr, flush=True)
            return trial

        first = args.first_trial
        trials = list(ThreadPoolExecutor(args.jobs).map(
            one, range(first, first + getattr(args, count))))
        rows.append((name, trials))
        print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
