"""A worker dies under torchrun (issue #22, fault 4): `kill -9` of one rank mid-run, the agent
restarts the group (`--max-restarts`), the tools resume by themselves from the last checkpoint
(TORCHELASTIC_RESTART_COUNT > 0 is a resume) and finish with the weights of an uninterrupted
2-process run; two agents (`--nnodes 2`, c10d rendezvous on 127.0.0.1) train to the weights of
one agent with 2 processes. CPU, gloo, one thread per process; the helpers are those of the
campaign (scripts/fault_torchrun.py)."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
import torch.distributed as dist
from conftest import REPO

from fad.engine.distributed import elastic_restart
from fad.engine.launch import default_argument_parser, parse_args, setup
from fad.errors import ConfigError


def _faults() -> ModuleType:
    path = os.path.join(REPO, "scripts", "fault_torchrun.py")
    spec = importlib.util.spec_from_file_location("fault_torchrun", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


F = _faults()


def run_ok(agent) -> str:
    code, log = F.finish(agent)
    assert code == 0, log[-3000:]
    return log


def killed_run(tool: str, root: str, out: Path, marker: str) -> str:
    """Run `tool` under torchrun, kill -9 rank 1 once `marker` (a checkpoint) exists; the
    agent's output, asserting it finished."""
    agent = F.torchrun(F.tool_args(tool, root, str(out)), F.free_port())
    assert F.kill_worker(agent, 1, out / marker), "the run ended before the kill"
    log = run_ok(agent)
    assert F.RESTARTED in (out / "log.txt").read_text(), log[-3000:]  # restart 1 (or 2)
    return log


@pytest.fixture(scope="module")
def straight_train(synthetic_root, tmp_path_factory) -> Path:
    """OUTPUT_DIR of an uninterrupted 2-process torchrun training."""
    out = tmp_path_factory.mktemp("straight_train")
    run_ok(F.torchrun(F.tool_args("train", synthetic_root, str(out)), F.free_port()))
    return out


def test_restart_count_comes_from_torchrun(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    assert elastic_restart() == 0
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert elastic_restart() == 0
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    assert elastic_restart() == 2


@pytest.mark.parametrize("flags", [[], ["--overwrite"]])
def test_an_elastic_restart_resumes_and_never_clears_the_run(tmp_path, monkeypatch, flags):
    (tmp_path / "model_0000003.pth").write_bytes(b"weights")
    (tmp_path / "last_checkpoint").write_text("model_0000003.pth")
    parser = default_argument_parser(None, resumable=True)
    argv = ["--config-file", os.path.join(REPO, "configs", "fcos", "fcos_tiny_synthetic.yaml"),
            *flags, "OUTPUT_DIR", str(tmp_path), "MODEL.DEVICE", "cpu"]
    if not flags:  # the first start refuses a folder holding checkpoints
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
        with pytest.raises(ConfigError, match="holds the checkpoints of an earlier run"):
            setup(parse_args(parser, argv))
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    args = parse_args(parser, argv)
    setup(args)
    assert args.resume and not args.overwrite
    assert (tmp_path / "model_0000003.pth").read_bytes() == b"weights"
    assert ("torchrun restart 1 of the worker group: resuming from the last checkpoint in "
            f"{tmp_path} (as --resume)") in (tmp_path / "log.txt").read_text()


# One rank of a 2-process group: joins the process group (fad.engine.distributed), sums its
# rank + 1 over the group and prints it.
SUM_WORKER = """
import torch, torch.distributed as dist
from fad.engine.distributed import init_distributed
init_distributed()
t = torch.ones(1) * (dist.get_rank() + 1)
dist.all_reduce(t)
print("sum", int(t.item()), flush=True)
dist.destroy_process_group()  # else gloo's threads can abort the exit ("terminate called ...")
"""


@pytest.mark.slow
def test_a_restarted_group_never_connects_to_the_dead_attempts_addresses():
    """The gloo hang of docs/RELIABILITY.md section 4, made deterministic: torchrun's agent keeps
    one store for every restart of its group, so the address a rank of the dead attempt
    published is still there. Attempt 0: rank 1 alone joins (publishes its address) and is
    killed. Restart 1: rank 0 starts, rank 1 10 s after rank 0 has written its address. Without
    a key prefix per restart, rank 0 reads the dead rank 1's address (connection refused) and
    rank 1 waits for rank 0 until the process group's timeout."""
    agent = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(agent.port),
           "WORLD_SIZE": "2", "GROUP_WORLD_SIZE": "1", "TORCHELASTIC_USE_AGENT_STORE": "True",
           "OMP_NUM_THREADS": "1"}

    def start(rank: int, restart: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", SUM_WORKER], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank),
                 "TORCHELASTIC_RESTART_COUNT": str(restart)})

    def after_a_new_key(proc: subprocess.Popen, seconds: float) -> None:
        keys = len(agent.list_keys())  # num_keys() also counts the store's own keys
        while len(agent.list_keys()) == keys and proc.poll() is None:
            time.sleep(0.05)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=seconds)

    dead = start(1, 0)
    after_a_new_key(dead, 1)  # its address
    dead.kill()
    dead.wait()
    rank0 = start(0, 1)
    # rank 0 wrote its address; a rank 0 that read the dead one gives up after gloo's retries
    # (~4 s) unless the new rank 1 connects first: it starts once they are over
    after_a_new_key(rank0, 10)
    rank1 = start(1, 1)
    for proc in (rank0, rank1):
        try:
            out, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        assert proc.returncode == 0 and "sum 3" in out, out[-2000:]


def test_lost_steps_come_from_the_log():
    log = ("iter: 3/12\niter: 4/12\n[..] torchrun restart 1 of the worker group: resuming ...\n"
           "resumed from /o/model_0000003.pth at iteration 3\niter: 4/12\n")
    assert F.lost_steps(log) == 1
    assert F.lost_steps("iter: 1/12\n") == 1  # killed before the first checkpoint


@pytest.mark.heavy  # minutes each
def test_killed_train_worker_restarts_and_finishes_with_the_same_weights(
        synthetic_root, tmp_path, straight_train):
    out = tmp_path / "killed"
    killed_run("train", synthetic_root, out, "model_0000003.pth")
    assert "resumed from" in (out / "log.txt").read_text()
    assert F.same_weights(straight_train / "model_final.pth", out / "model_final.pth")


@pytest.mark.heavy
def test_killed_search_worker_restarts_and_finishes_with_the_same_weights(
        synthetic_root, tmp_path):
    straight, out = tmp_path / "straight", tmp_path / "killed"
    run_ok(F.torchrun(F.tool_args("search", synthetic_root, str(straight)), F.free_port()))
    killed_run("search", synthetic_root, out, "model_0000002.pth")
    assert F.same_finish(out, straight)  # weights and genotype.log


@pytest.mark.heavy
def test_two_agents_train_to_the_weights_of_one(synthetic_root, tmp_path, straight_train):
    out, port = tmp_path / "two_nodes", F.free_port()
    agents = [F.torchrun(F.tool_args("train", synthetic_root, str(out)), port, nnodes=2, nproc=1)
              for _ in range(2)]
    for agent in agents:
        run_ok(agent)
    assert F.same_weights(straight_train / "model_final.pth", out / "model_final.pth")
