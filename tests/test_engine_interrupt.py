"""Ctrl-C / SIGTERM: the trainer finishes the iteration, writes its checkpoint atomically, logs
"interrupted at iteration N; continue with --resume" and the tools exit 130 / 143 without a
traceback; a second signal exits at once; `--resume` continues from that checkpoint.
Also checkpoint retention (SOLVER.CHECKPOINT_KEEP) and the quiet CPU start (no CUDA notice)."""
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import torch.multiprocessing as mp
from conftest import REPO
from torch import nn

from fad.config import get_cfg_defaults
from fad.engine.amp import amp_policy
from fad.engine.checkpoint import Checkpointer
from fad.engine.interrupt import Interrupted
from fad.engine.tool import run_tool
from fad.engine.trainer import StepOutput, Trainer, TrainStep

CPU = torch.device("cpu")


class LinearStep(TrainStep):
    """A 2x1 linear regression; sends `signum` to this process during iteration `kill_at`."""

    def __init__(self, cfg, kill_at: int = 0, signum: int = signal.SIGINT):
        model = nn.Linear(2, 1)
        super().__init__(cfg, model, torch.optim.SGD(model.parameters(), lr=0.1),
                         amp_policy(cfg, CPU), CPU)
        self.kill_at, self.signum, self.calls = kill_at, signum, 0

    def run(self, batch):
        self.calls += 1
        if self.calls == self.kill_at:
            os.kill(os.getpid(), self.signum)
        loss = (self.model(batch) ** 2).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return StepOutput({"loss": loss.detach()})


def _cfg(out, max_iter=10, period=4, keep=0):
    cfg = get_cfg_defaults()
    cfg.merge_from_list(["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", max_iter,
                         "SOLVER.CHECKPOINT_PERIOD", period, "SOLVER.CHECKPOINT_KEEP", keep,
                         "SOLVER.WARMUP_ITERS", 0, "SOLVER.AMP", False, "MODEL.DEVICE", "cpu"])
    return cfg


def _trainer(cfg, step):
    """A Trainer over constant batches, exactly MAX_ITER - start of them."""
    return Trainer(cfg, step, lambda start: (torch.ones(4, 2)
                                             for _ in range(start, cfg.SOLVER.MAX_ITER)))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_after_the_iteration_with_a_checkpoint(tmp_path, caplog, signum):
    cfg = _cfg(tmp_path)
    handler = signal.getsignal(signum)
    trainer = _trainer(cfg, LinearStep(cfg, kill_at=3, signum=signum))
    with pytest.raises(Interrupted) as info:
        trainer.train()
    assert info.value.iteration == 3 and info.value.exit_code == 128 + signum
    assert "interrupted at iteration 3; continue with --resume" in caplog.text
    last = Checkpointer(str(tmp_path)).last()
    assert os.path.basename(last) == "model_0000003.pth"
    assert Checkpointer.load(last)["iteration"] == 3
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]
    assert signal.getsignal(signum) is handler  # the previous handler is back

    resumed = _trainer(cfg, LinearStep(cfg))
    resumed.resume_or_load(resume=True)
    assert resumed.iter == 3
    resumed.train()
    assert resumed.step.calls == 7 and os.path.exists(tmp_path / "model_final.pth")


def test_run_tool_exits_with_the_signal_code():
    def stopped():
        raise Interrupted(signal.SIGTERM, 5)

    def ctrl_c():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as info:
        run_tool(stopped)
    assert info.value.code == 143
    with pytest.raises(SystemExit) as info:
        run_tool(ctrl_c)
    assert info.value.code == 130


def test_a_second_signal_exits_at_once(tmp_path):
    script = textwrap.dedent("""
        import os, signal, time
        from fad.engine.interrupt import StopRequest
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.signum == signal.SIGINT
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(30)
        print("not reached")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert proc.returncode == 130, proc.stderr
    assert "SIGINT again: exiting now" in proc.stderr and "not reached" not in proc.stdout
    assert "Traceback" not in proc.stderr


def test_under_torchrun_the_forwarded_repeat_is_the_same_stop():
    script = textwrap.dedent("""
        import os, signal
        from fad.engine.interrupt import StopRequest
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGINT)  # from the terminal
            os.kill(os.getpid(), signal.SIGINT)  # torchrun passing it on
        print("still stopping cleanly", stop.signum == signal.SIGINT)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env=dict(os.environ, TORCHELASTIC_RUN_ID="x"))
    assert proc.returncode == 0 and "still stopping cleanly True" in proc.stdout, proc.stderr


def test_retention_keeps_the_newest_periodic_checkpoints_and_the_final(tmp_path):
    cfg = _cfg(tmp_path, max_iter=10, period=2, keep=2)
    _trainer(cfg, LinearStep(cfg)).train()
    names = sorted(f for f in os.listdir(tmp_path) if f.endswith(".pth"))
    assert names == ["model_0000006.pth", "model_0000008.pth", "model_final.pth"]
    keep_all = tmp_path / "all"
    cfg = _cfg(keep_all, max_iter=6, period=2, keep=0)
    _trainer(cfg, LinearStep(cfg)).train()
    assert len([f for f in os.listdir(keep_all) if f.endswith(".pth")]) == 3


def test_prune_never_deletes_the_last_checkpoint(tmp_path):
    ck = Checkpointer(str(tmp_path))
    ck.save("model_0000009", {"iteration": 9})
    for i in (2, 4, 6):
        torch.save({"iteration": i}, tmp_path / f"model_{i:07d}.pth")
    # keep 1 keeps 2 (MIN_KEEP: one to fall back to when the newest is damaged)
    assert [os.path.basename(p) for p in ck.prune(1)] == ["model_0000002.pth", "model_0000004.pth"]
    assert ck.prune(0) == [] and os.path.exists(ck.last())


def _ddp_worker(rank: int, world: int, out: str, port: int) -> None:
    """Rank 1 alone gets SIGINT during iteration 3; every rank records where it stopped."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from fad.engine.distributed import init_distributed

    torch.set_num_threads(1)
    assert init_distributed()
    cfg = _cfg(out)
    trainer = _trainer(cfg, LinearStep(cfg, kill_at=3 if rank == 1 else 0))
    try:
        trainer.train()
    except Interrupted as exc:
        with open(os.path.join(out, f"rank{rank}.txt"), "w") as f:
            f.write(str(exc.iteration))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_all_ranks_stop_at_the_same_iteration(tmp_path):
    port = 29600 + os.getpid() % 1000
    mp.spawn(_ddp_worker, args=(2, str(tmp_path), port), nprocs=2, join=True)
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)] == ["3", "3"]
    assert os.path.basename(Checkpointer(str(tmp_path)).last()) == "model_0000003.pth"


# ---- through the tools, as a user meets it: a real process gets the signal -----------------

TINY_TRAIN = ["MODEL.DEVICE", "cpu", "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.FCOS.NUM_CONVS", "1",
              "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128",
              "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CHECKPOINT_PERIOD", "1000",
              "SOLVER.LOG_PERIOD", "1", "SOLVER.WARMUP_ITERS", "2"]


def _interrupt(tool: str, args: list[str], signum: int,
               group: bool = False) -> tuple[int, str, str, int]:
    """Start tools/<tool>.py, send `signum` once it logged iteration 2 (to its whole process
    group, loader workers included, as a terminal's Ctrl-C does, when `group`);
    returns (rc, stdout, stderr, N of "interrupted at iteration N")."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "tools", f"{tool}.py"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    lines = []
    deadline = time.time() + 300
    for line in proc.stdout:
        lines.append(line)
        if re.search(r"iter: 2/", line):
            if group:
                os.killpg(proc.pid, signum)
            else:
                proc.send_signal(signum)
            break
        assert time.time() < deadline, "".join(lines)
    out, err = proc.communicate(timeout=300)
    out = "".join(lines) + out
    found = re.search(r"interrupted at iteration (\d+); continue with --resume", out)
    assert found, out + err
    return proc.returncode, out, err, int(found.group(1))


def _check_stopped(out_dir, n: int, err: str) -> None:
    assert "Traceback" not in err and "No CUDA runtime" not in err, err
    last = Checkpointer(str(out_dir)).last()
    assert os.path.basename(last) == f"model_{n:07d}.pth"
    assert Checkpointer.load(last)["iteration"] == n
    assert f"interrupted at iteration {n}" in (out_dir / "log.txt").read_text()


@pytest.mark.slow
def test_train_net_ctrl_c_then_resume(synthetic_root, tmp_path):
    config = os.path.join(REPO, "configs", "fcos", "fcos_tiny_synthetic.yaml")
    args = ["--config-file", config, "DATASETS.ROOT", synthetic_root, "OUTPUT_DIR",
            str(tmp_path), *TINY_TRAIN, "--skip-test"]
    rc, out, err, n = _interrupt("train_net", [*args, "SOLVER.MAX_ITER", "200",
                                               "DATALOADER.NUM_WORKERS", "2"], signal.SIGINT,
                                 group=True)
    assert rc == 130, err
    assert out.count("SIGINT: stopping after this iteration") == 1  # not once per worker
    _check_stopped(tmp_path, n, err)
    done = subprocess.run([sys.executable, os.path.join(REPO, "tools", "train_net.py"), *args,
                           "SOLVER.MAX_ITER", str(n + 1), "--resume"],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr
    assert f"at iteration {n}" in done.stdout and f"iter: {n + 1}/{n + 1}" in done.stdout
    assert "No CUDA runtime" not in done.stderr


@pytest.mark.slow
def test_search_net_sigterm_then_resume(synthetic_root, tmp_path):
    config = os.path.join(REPO, "configs", "fad", "search", "fad-fcos_tiny_synthetic.yaml")
    args = ["--config-file", config, "DATASETS.ROOT", synthetic_root, "OUTPUT_DIR",
            str(tmp_path), "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TRAIN", "(96,)",
            "INPUT.MAX_SIZE_TRAIN", "128", "SOLVER.LOG_PERIOD", "1",
            "SOLVER.CHECKPOINT_PERIOD", "1000"]
    rc, out, err, n = _interrupt("search_net", [*args, "SOLVER.MAX_ITER", "200"], signal.SIGTERM)
    assert rc == 143, err
    _check_stopped(tmp_path, n, err)
    assert (tmp_path / "genotype.log").exists()  # the search's checkpoint hook ran
    done = subprocess.run([sys.executable, os.path.join(REPO, "tools", "search_net.py"), *args,
                           "SOLVER.MAX_ITER", str(n + 1), "--resume"],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr
    assert f"at iteration {n}" in done.stdout and "search done" in done.stdout
