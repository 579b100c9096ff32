"""A failed write (issue #22 item 3): a full disk / size limit (RLIMIT_FSIZE: "File too large")
or an OUTPUT_DIR that turns read-only mid-run. The tool says in one line what it could not
write and exits 2; the previous checkpoint and `last_checkpoint` are untouched and loadable; no
partial file is left behind."""
import os
import shutil
import stat
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO

from fad.engine.checkpoint import Checkpointer, damage
from fad.errors import WriteError
from fad.utils.io import atomic_write_text

# A trainer of a 256x256 linear layer (a ~0.5 MB checkpoint with SGD momentum), 6 iterations,
# a checkpoint every 2, under run_tool as the tools run; after iteration `FAULT_AT` the fault
# of argv[2] starts: "fsize" (RLIMIT_FSIZE of 64 KiB) or "readonly" (OUTPUT_DIR made read-only).
SCRIPT = textwrap.dedent("""
    import os, resource, subprocess, sys
    import torch
    from torch import nn
    from fad.config import get_cfg_defaults
    from fad.engine.amp import amp_policy
    from fad.engine.tool import run_tool
    from fad.engine.trainer import HookBase, StepOutput, Trainer, TrainStep

    out, fault = sys.argv[1], sys.argv[2]
    cpu = torch.device("cpu")

    class Step(TrainStep):
        def __init__(self, cfg):
            model = nn.Linear(256, 256)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            super().__init__(cfg, model, opt, amp_policy(cfg, cpu), cpu)

        def run(self, batch):
            loss = self.model(batch).pow(2).mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            return StepOutput({"loss": loss.detach()})

    class Fault(HookBase):
        def after_step(self, trainer):
            if trainer.iter != 3:
                return
            if fault == "fsize":
                resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, resource.RLIM_INFINITY))
            elif os.geteuid() == 0:  # root writes into a mode-555 folder: make it immutable
                subprocess.run(["chattr", "+i", out], check=True)
            else:
                os.chmod(out, 0o555)

    def main():
        cfg = get_cfg_defaults()
        cfg.merge_from_list(["OUTPUT_DIR", out, "SOLVER.MAX_ITER", 6, "SOLVER.LOG_PERIOD", 1,
                             "SOLVER.CHECKPOINT_PERIOD", 2, "SOLVER.WARMUP_ITERS", 0,
                             "SOLVER.AMP", False, "MODEL.DEVICE", "cpu"])
        os.makedirs(out)
        trainer = Trainer(cfg, Step(cfg), lambda s: (torch.ones(4, 256) for _ in range(s, 6)),
                          hooks=[Fault()])
        trainer.train()

    run_tool(main)
""")


def _can_make_read_only(folder) -> bool:
    if os.geteuid() != 0:
        return True
    probe = folder / "probe"
    probe.mkdir()
    made = subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode == 0
    if made:
        subprocess.run(["chattr", "-i", str(probe)], check=True)
    return made and shutil.which("chattr") is not None


@pytest.mark.parametrize("fault, reason", [("fsize", "File too large"),
                                           ("readonly", "Operation not permitted"
                                            if os.geteuid() == 0 else "Permission denied")])
def test_a_failed_checkpoint_write_keeps_the_last_good_state(tmp_path, fault, reason):
    if fault == "readonly" and not _can_make_read_only(tmp_path):
        pytest.skip("this file system cannot make a folder read-only for root (chattr)")
    out = tmp_path / "run"
    try:
        run = subprocess.run([sys.executable, "-c", SCRIPT, str(out), fault],
                             capture_output=True, text=True, timeout=300, cwd=REPO,
                             env=dict(os.environ, OMP_NUM_THREADS="1"))
        names = sorted(os.listdir(out))
    finally:
        if fault == "readonly":
            if os.geteuid() == 0:
                subprocess.run(["chattr", "-i", str(out)], check=True)
            os.chmod(out, 0o755)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and run.stderr.count("\n") == 1, run.stderr
    failed = out / "model_0000004.pth"
    assert run.stderr.startswith(f"error: could not write {failed} ({reason}); the previous "
                                 "file, if any, is unchanged"), run.stderr
    assert names == ["last_checkpoint", "model_0000002.pth", "model_0000002.pth.sha256", "tb"]
    last = Checkpointer(str(out)).last()
    assert last == str(out / "model_0000002.pth") and damage(last) is None
    assert Checkpointer.load(last)["iteration"] == 2


def test_atomic_write_failure_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    target.write_text("old")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(WriteError, match=r"could not write .*metrics.json \(No space left"):
        atomic_write_text(str(target), "new")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["metrics.json"]
    assert isinstance(WriteError("x"), OSError)  # optional writes that catch OSError still do


def test_atomic_write_fsyncs_the_folder_after_the_rename(tmp_path, monkeypatch):
    """The rename is made durable: after os.replace the containing folder is fsync'ed (a power
    loss could otherwise lose the new directory entry); the file itself was fsync'ed before."""
    events: list[tuple[str, object]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        events.append(("fsync", (st.st_ino, stat.S_ISDIR(st.st_mode))))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("replace", os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "last_checkpoint"
    atomic_write_text(str(target), "model_0000002.pth")
    folder = os.stat(tmp_path).st_ino
    assert target.read_text() == "model_0000002.pth"
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"], events
    assert events[0][1] == (os.stat(target).st_ino, False)  # the file, before its rename
    assert events[2][1][0] == folder  # then the folder holding the new entry
    assert os.listdir(tmp_path) == ["last_checkpoint"]


@pytest.mark.parametrize("fails", ["open", "fsync"])
def test_atomic_write_skips_a_folder_it_cannot_fsync(tmp_path, monkeypatch, fails):
    """Where a folder cannot be opened (Windows) or fsync'ed (some network file systems), the
    write still succeeds quietly: the folder fsync is best effort."""
    folder = str(tmp_path)
    real_open, real_fsync = os.open, os.fsync

    def no_folder_open(path, flags, *args, **kwargs):
        if os.fspath(path) == folder:
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args, **kwargs)

    def no_folder_fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(22, "Invalid argument")
        real_fsync(fd)

    if fails == "open":
        monkeypatch.setattr(os, "open", no_folder_open)
    else:
        monkeypatch.setattr(os, "fsync", no_folder_fsync)
    atomic_write_text(str(tmp_path / "metrics.json"), "new")
    assert (tmp_path / "metrics.json").read_text() == "new"
    assert os.listdir(tmp_path) == ["metrics.json"]
