"""A worker dies under torchrun (issue #22, fault 4): `kill -9` of one rank mid-run, the agent
restarts the group (`--max-restarts`), the tools resume by themselves from the last checkpoint
(TORCHELASTIC_RESTART_COUNT > 0 is a resume) and finish with the weights of an uninterrupted
2-process run; two agents (`--nnodes 2`, c10d rendezvous on 127.0.0.1) train to the weights of
one agent with 2 processes. CPU, gloo, one thread per process."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO
from test_tools_search import SEARCH_CONFIG, TINY_SEARCH

from fad.engine.distributed import elastic_restart

TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
TRAIN_CONFIG = os.path.join(REPO, "configs", "fcos", "fcos_tiny_synthetic.yaml")
# 12 iterations of ~0.5-1 s at 2 processes x 1 thread: the kill lands after the checkpoint at 3
TINY_TRAIN = ["MODEL.DEVICE", "cpu", "NUM_THREADS", "1", "MODEL.FPN.OUT_CHANNELS", "32",
              "MODEL.FCOS.NUM_CONVS", "1", "INPUT.MIN_SIZE_TRAIN", "(96,)",
              "INPUT.MAX_SIZE_TRAIN", "128", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "12",
              "SOLVER.CHECKPOINT_PERIOD", "3", "SOLVER.WARMUP_ITERS", "2", "SOLVER.STEPS", "(8,)",
              "SOLVER.LOG_PERIOD", "1"]
SEARCH = [*TINY_SEARCH, "NUM_THREADS", "1", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "8",
          "SOLVER.CHECKPOINT_PERIOD", "2"]
KILL_AFTER = "model_0000003.pth"  # train: the first periodic checkpoint
TIMEOUT_S = 240


def free_port() -> int:
    """A TCP port nobody listens on now (for the c10d rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(tool: str, args: list[str], port: int, nnodes: int = 1,
             nproc: int = 2) -> subprocess.Popen:
    """Start a torchrun agent running tools/<tool> (2 restarts allowed, c10d rendezvous on
    127.0.0.1:`port`); stdout and stderr together in the returned Popen's stdout."""
    cmd = [TORCHRUN, f"--nnodes={nnodes}", f"--nproc-per-node={nproc}", "--max-restarts=2",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=fad-test",
           os.path.join(REPO, "tools", tool), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TORCHELASTIC_RESTART_COUNT", None)
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> str:
    """Wait for an agent; its output, asserting it exited 0."""
    out, _ = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, out[-3000:]
    return out


def worker_pid(agent: int, rank: int) -> int | None:
    """The pid of the worker of global `rank` among the children of the torchrun agent `agent`
    (read from /proc: RANK in the child's environment), or None while there is none."""
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


def kill_worker_when(agent: subprocess.Popen, marker: Path, rank: int = 1) -> int:
    """`kill -9` the worker of `rank` once `marker` exists (mid-run); returns its pid."""
    deadline = time.monotonic() + TIMEOUT_S
    while not marker.exists():
        assert agent.poll() is None, "the run ended before the kill"
        assert time.monotonic() < deadline, f"{marker} never appeared"
        time.sleep(0.05)
    pid = worker_pid(agent.pid, rank)
    assert pid is not None, "no worker of that rank under the agent"
    os.kill(pid, 9)
    return pid


def weights(path: Path) -> dict[str, torch.Tensor]:
    """The model tensors of a checkpoint."""
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    """Bit-identical tensors, the same keys."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def train_args(root: str, out: Path) -> list[str]:
    return ["--config-file", TRAIN_CONFIG, "--skip-test", "DATASETS.ROOT", root,
            "OUTPUT_DIR", str(out), *TINY_TRAIN]


@pytest.fixture(scope="module")
def straight_train(synthetic_root, tmp_path_factory) -> Path:
    """OUTPUT_DIR of an uninterrupted 2-process torchrun training."""
    out = tmp_path_factory.mktemp("straight_train")
    finish(torchrun("train_net.py", train_args(synthetic_root, out), free_port()))
    return out


def test_restart_count_comes_from_torchrun(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    assert elastic_restart() == 0
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert elastic_restart() == 0
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    assert elastic_restart() == 2


@pytest.mark.slow
def test_killed_train_worker_restarts_and_finishes_with_the_same_weights(
        synthetic_root, tmp_path, straight_train):
    out = tmp_path / "killed"
    agent = torchrun("train_net.py", train_args(synthetic_root, out), free_port())
    kill_worker_when(agent, out / KILL_AFTER)
    log = finish(agent)
    text = (out / "log.txt").read_text()
    assert " of the worker group: resuming" in text, log[-3000:]  # restart 1 or 2
    assert "resumed from" in text
    assert_same_weights(straight_train / "model_final.pth", out / "model_final.pth")


@pytest.mark.slow
def test_killed_search_worker_restarts_and_finishes_with_the_same_weights(
        synthetic_root, tmp_path):
    args = ["--config-file", SEARCH_CONFIG, "DATASETS.ROOT", synthetic_root, *SEARCH]
    straight, out = tmp_path / "straight", tmp_path / "killed"
    finish(torchrun("search_net.py", [*args, "OUTPUT_DIR", str(straight)], free_port()))
    agent = torchrun("search_net.py", [*args, "OUTPUT_DIR", str(out)], free_port())
    kill_worker_when(agent, out / "model_0000002.pth")
    log = finish(agent)
    text = (out / "log.txt").read_text()
    assert " of the worker group: resuming" in text, log[-3000:]  # restart 1 or 2
    assert_same_weights(straight / "model_final.pth", out / "model_final.pth")
    assert (straight / "genotype.log").read_text() == (out / "genotype.log").read_text()


@pytest.mark.slow
def test_two_agents_train_to_the_weights_of_one(synthetic_root, tmp_path, straight_train):
    out, port = tmp_path / "two_nodes", free_port()
    agents = [torchrun("train_net.py", train_args(synthetic_root, out), port, nnodes=2, nproc=1)
              for _ in range(2)]
    for agent in agents:
        finish(agent)
    assert_same_weights(straight_train / "model_final.pth", out / "model_final.pth")
