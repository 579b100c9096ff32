"""Faults under torchrun (issue #22, fault 4) for the campaign and tests/test_faults_torchrun.py:
`kill -9` of one worker of a 2-process torchrun group (`--max-restarts 2`), after which the agent
restarts the group and the tools resume by themselves (TORCHELASTIC_RESTART_COUNT > 0); and two
agents (`--nnodes 2`, c10d rendezvous on 127.0.0.1) against one agent with 2 processes.

Everything runs on the CPU under gloo, one thread per process, on the tiny configs. Worker pids
are read from /proc (the agent's children, RANK in their environment).
"""
from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
TIMEOUT_S = 300
# tool -> (script, config, overrides): 12 (train) / 8 (search) iterations of ~0.5-3 s at
# 2 processes x 1 thread, checkpoints every 3 / 2
TOOLS = {
    "train": ("train_net.py", "configs/fcos/fcos_tiny_synthetic.yaml", [
        "--skip-test", "MODEL.DEVICE", "cpu", "NUM_THREADS", "1", "MODEL.FPN.OUT_CHANNELS", "32",
        "MODEL.FCOS.NUM_CONVS", "1", "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN",
        "128", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "12", "SOLVER.CHECKPOINT_PERIOD",
        "3", "SOLVER.WARMUP_ITERS", "2", "SOLVER.STEPS", "(8,)", "SOLVER.LOG_PERIOD", "1"]),
    "search": ("search_net.py", "configs/fad/search/fad-fcos_tiny_synthetic.yaml", [
        "MODEL.DEVICE", "cpu", "NUM_THREADS", "1", "MODEL.FPN.OUT_CHANNELS", "16",
        "MODEL.FAD.TOWER_CHANNELS", "16", "MODEL.FAD.EDGE_CHANNELS", "8",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96", "SOLVER.IMS_PER_BATCH",
        "2", "SOLVER.MAX_ITER", "8", "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.WARMUP_ITERS", "1",
        "SOLVER.LOG_PERIOD", "1"]),
}
RESTARTED = " of the worker group: resuming"  # fad.engine.launch's line on an elastic restart


def free_port() -> int:
    """A TCP port nobody listens on now (for the c10d rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool_args(tool: str, root: str, out: str) -> list[str]:
    """tools/<script> and its arguments for `tool` ('train' or 'search') into `out`."""
    script, config, extra = TOOLS[tool]
    return [os.path.join(REPO, "tools", script), "--config-file", os.path.join(REPO, config),
            "DATASETS.ROOT", root, "OUTPUT_DIR", out, *extra]


def torchrun(args: list[str], port: int, nnodes: int = 1, nproc: int = 2,
             log: Path | None = None) -> subprocess.Popen:
    """Start a torchrun agent on `args` (a script and its arguments), 2 restarts allowed, c10d
    rendezvous on 127.0.0.1:`port`; stdout and stderr go to `log` (else to the Popen's stdout)."""
    cmd = [TORCHRUN, f"--nnodes={nnodes}", f"--nproc-per-node={nproc}", "--max-restarts=2",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=fad-faults",
           *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TORCHELASTIC_RESTART_COUNT", None)
    if log is None:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    with open(log, "w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def finish(agent: subprocess.Popen) -> tuple[int, str]:
    """Wait for an agent: (exit code, its output when piped); an agent still running after
    TIMEOUT_S is killed with its workers (its session) and reported as hung (exit code -9)."""
    try:
        out, _ = agent.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(agent.pid, signal.SIGKILL)
        out, _ = agent.communicate()
        return -signal.SIGKILL, f"{out or ''}\nhung: killed after {TIMEOUT_S} s"
    return agent.returncode, out or ""


def worker_pid(agent: int, rank: int) -> int | None:
    """The pid of the worker of global `rank` among the children of the torchrun agent `agent`
    (RANK in the child's environment, from /proc), or None while there is none."""
    for task in Path(f"/proc/{agent}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in children:
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in env:
                return int(pid)
    return None


def kill_worker(agent: subprocess.Popen, rank: int, when: Path | float) -> bool:
    """`kill -9` the worker of `rank` once file `when` exists, or `when` seconds after now (then
    as soon as that worker exists); False when the run ended first."""
    deadline = time.monotonic() + TIMEOUT_S
    start = time.monotonic()
    while time.monotonic() < deadline and agent.poll() is None:
        due = when.exists() if isinstance(when, Path) else time.monotonic() - start >= when
        pid = worker_pid(agent.pid, rank) if due else None
        if pid is not None:
            os.kill(pid, 9)
            return True
        time.sleep(0.05)
    return False


def same_weights(a: Path, b: Path) -> bool:
    """The model tensors of two checkpoints are bit-identical (same keys)."""
    wa = torch.load(a, map_location="cpu", weights_only=True)["model"]
    wb = torch.load(b, map_location="cpu", weights_only=True)["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def same_finish(out: Path, ref: Path) -> bool:
    """model_final.pth weights (and genotype.log when the reference has one) bit-identical."""
    if not (out / "model_final.pth").is_file():
        return False
    same = same_weights(ref / "model_final.pth", out / "model_final.pth")
    if (ref / "genotype.log").is_file():
        same = same and (ref / "genotype.log").read_text() == (out / "genotype.log").read_text()
    return same


def reference(tool: str, root: str, work: Path) -> tuple[Path, float]:
    """(OUTPUT_DIR, seconds) of an uninterrupted 2-process run of `tool` under `work`, made
    once (the seconds are kept beside it)."""
    out, seconds = work / f"torchrun_reference_{tool}", work / f"torchrun_reference_{tool}.s"
    if not (out / "model_final.pth").is_file() or not seconds.is_file():
        shutil.rmtree(out, ignore_errors=True)
        start = time.monotonic()
        code, log = finish(torchrun(tool_args(tool, root, str(out)), free_port()))
        if code != 0:
            raise RuntimeError(f"reference torchrun {tool} run failed: {log[-2000:]}")
        seconds.write_text(f"{time.monotonic() - start:.1f}")
    return out, float(seconds.read_text())


def lost_steps(log: str) -> int:
    """Iterations reached before the kill minus the iteration the restart resumed from."""
    reached = [int(n) for n in re.findall(r"iter: (\d+)/", log.split(RESTARTED)[0])]
    resumed = re.search(r"resumed from \S+ at iteration (\d+)", log)
    return max((reached[-1] if reached else 0) - (int(resumed.group(1)) if resumed else 0), 0)


def rank_kill_trial(tool: str, trial: int, root: str, work: Path) -> tuple[bool, int, bool, str]:
    """Kill a random rank at a random instant of a 2-process run of `tool` (within the
    reference run's duration); (survived: the agent exited 0, lost steps, bit-identical finish,
    note)."""
    rng = random.Random(f"torchrun{tool}{trial}")
    ref, seconds = reference(tool, root, work)
    out = work / f"torchrun_kill_{tool}_{trial}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rank, delay = rng.randrange(2), rng.uniform(0.1, seconds)
    agent = torchrun(tool_args(tool, root, str(out)), free_port(), log=out / "agent.txt")
    killed = kill_worker(agent, rank, delay)
    code, _ = finish(agent)
    log = (out / "log.txt").read_text() if (out / "log.txt").is_file() else ""
    note = f"rank {rank} at {delay:.0f} s" + ("" if killed else ", run ended before the kill")
    note += f", hung over {TIMEOUT_S} s" if code == -signal.SIGKILL else ""
    return code == 0, lost_steps(log) if killed else 0, same_finish(out, ref), note


def two_agents_trial(trial: int, root: str, work: Path) -> tuple[bool, int, bool, str]:
    """Two agents (`--nnodes 2`, one process each) train; (both exited 0, 0, weights equal one
    agent's 2-process run, note)."""
    ref, _ = reference("train", root, work)
    out = work / f"torchrun_two_nodes_{trial}"
    shutil.rmtree(out, ignore_errors=True)
    port = free_port()
    agents = [torchrun(tool_args("train", root, str(out)), port, nnodes=2, nproc=1)
              for _ in range(2)]
    codes = [finish(a)[0] for a in agents]
    return all(c == 0 for c in codes), 0, same_finish(out, ref), ""
