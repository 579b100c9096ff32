"""A damaged checkpoint (issue #22 item 2): every checkpoint has a size + sha256 record; --resume
checks it before loading, warns once naming a damaged file and resumes from the newest intact
one; with none intact, one line naming them. fad-test / MODEL.WEIGHT given a damaged file: one
line, no traceback. Also the #23 leftover: fad-test writes config_test.yaml, not config.yaml."""
import hashlib
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, tiny_fcos_cfg
from torch import nn

from fad.engine.amp import amp_policy
from fad.engine.checkpoint import RECORD, Checkpointer, damage
from fad.engine.trainer import StepOutput, Trainer, TrainStep
from fad.errors import CheckpointError
from fad.modeling import build_detector

CPU = torch.device("cpu")
CLASSES = ["red_circle", "green_square", "blue_triangle", "yellow_star"]  # the synthetic set's
DAMAGES = {
    "truncated": lambda data: data[: len(data) // 2],
    "zero bytes": lambda data: b"",
    "random bytes": lambda data: data[:100] + os.urandom(64) + data[164:],
}


class LinearStep(TrainStep):
    """A 2x1 linear regression on constant batches."""

    def __init__(self, cfg):
        model = nn.Linear(2, 1)
        super().__init__(cfg, model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                         amp_policy(cfg, CPU), CPU)

    def run(self, batch):
        loss = ((self.model(batch) - 1) ** 2).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return StepOutput({"loss": loss.detach()})


def _trainer(out, max_iter=6) -> Trainer:
    from fad.config import get_cfg_defaults

    cfg = get_cfg_defaults()
    cfg.merge_from_list(["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", max_iter,
                         "SOLVER.CHECKPOINT_PERIOD", 2, "SOLVER.CHECKPOINT_KEEP", 1,
                         "SOLVER.WARMUP_ITERS", 0, "SOLVER.AMP", False, "MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    return Trainer(cfg, LinearStep(cfg), lambda start: (torch.arange(8.0).view(4, 2)
                                                        for _ in range(start, max_iter)))


def _damage(path, how: str) -> None:
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(DAMAGES[how](data))


def test_the_record_holds_size_and_sha256(tmp_path):
    path = Checkpointer(str(tmp_path)).save("model_0000002", {"w": torch.arange(5)})
    data = open(path, "rb").read()
    assert open(path + RECORD).read() == (f"sha256={hashlib.sha256(data).hexdigest()} "
                                          f"bytes={len(data)}\n")
    assert damage(path) is None
    assert open(tmp_path / "last_checkpoint").read() == "model_0000002.pth"


@pytest.mark.parametrize("how", DAMAGES)
def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, caplog, how):
    _trainer(tmp_path, max_iter=4).train()  # model_0000002, model_final (iteration 4)
    final = tmp_path / "model_final.pth"
    reference = torch.load(final, weights_only=True)["model"]
    _damage(final, how)
    assert damage(str(final)) is not None
    resumed = _trainer(tmp_path, max_iter=4)
    resumed.resume_or_load(resume=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(final) in warnings[0], warnings
    assert "model_0000002.pth, the newest intact one" in warnings[0]
    assert resumed.iter == 2
    resumed.train()  # the same 2 iterations again: the same bits
    again = torch.load(final, weights_only=True)["model"]
    assert all(torch.equal(again[k], reference[k]) for k in reference)


def test_a_damaged_record_counts_as_damage(tmp_path):
    path = Checkpointer(str(tmp_path)).save("model_0000002", {"w": torch.arange(5)})
    with open(path + RECORD, "w") as f:
        f.write("garbage")
    assert "record" in damage(path)


def test_no_intact_checkpoint_is_one_line_naming_them(tmp_path):
    _trainer(tmp_path, max_iter=4).train()
    for name in ("model_final.pth", "model_0000002.pth"):
        _damage(tmp_path / name, "truncated")
    with pytest.raises(CheckpointError) as info:
        _trainer(tmp_path, max_iter=4).resume_or_load(resume=True)
    message = str(info.value)
    assert "\n" not in message and "no intact checkpoint" in message
    assert "model_final.pth" in message and "model_0000002.pth" in message


def test_retention_keeps_two_to_fall_back_to(tmp_path):
    _trainer(tmp_path, max_iter=9).train()  # SOLVER.CHECKPOINT_KEEP 1
    names = sorted(n for n in os.listdir(tmp_path) if n.startswith("model_"))
    assert names == ["model_0000006.pth", "model_0000006.pth.sha256", "model_0000008.pth",
                     "model_0000008.pth.sha256", "model_final.pth", "model_final.pth.sha256"]


@pytest.mark.parametrize("how", DAMAGES)
def test_load_of_a_damaged_file_is_one_line(tmp_path, how):
    path = Checkpointer(str(tmp_path)).save("model_0000002", {"w": torch.arange(500)})
    _damage(path, how)
    with pytest.raises(CheckpointError, match="model_0000002.pth is damaged"):
        Checkpointer.load(path)
    os.remove(path + RECORD)  # a file without record: the unpickler is the check
    if how != "random bytes":
        with pytest.raises(CheckpointError, match="model_0000002.pth is corrupt or not a torch"):
            Checkpointer.load(path)


def _tool(name: str, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", f"{name}.py"), *args],
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def _weights(root, out) -> tuple[str, list[str]]:
    """A tiny FCOS checkpoint (random init, written by Checkpointer) and the tool arguments."""
    cfg = tiny_fcos_cfg(root, str(out))
    path = Checkpointer(str(out)).save("model_final", {
        "model": build_detector(cfg, 4).state_dict(), "classes": CLASSES,
        "iteration": 6, "cfg": cfg.dump()})
    args = ["--config-file", os.path.join(REPO, "configs", "fcos", "fcos_tiny_synthetic.yaml"),
            "DATASETS.ROOT", root, "OUTPUT_DIR", str(out), "MODEL.DEVICE", "cpu",
            "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.FCOS.NUM_CONVS", "1",
            "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128"]
    return path, args


@pytest.mark.slow
def test_fad_test_and_fad_train_given_a_damaged_file_say_one_line(synthetic_root, tmp_path):
    path, args = _weights(synthetic_root, tmp_path / "run")
    _damage(path, "truncated")
    for tool, extra in (("test_net", []), ("train_net", ["OUTPUT_DIR", str(tmp_path / "new")])):
        run = _tool(tool, [*args, "MODEL.WEIGHT", path, *extra])
        assert run.returncode == 2, run.stderr
        size, recorded = os.path.getsize(path), open(path + RECORD).read().split("bytes=")[1]
        assert run.stderr.strip() == (f"error: checkpoint {path} is damaged ({size} bytes, its "
                                      f"record says {recorded.strip()}); use an earlier "
                                      "checkpoint of the run")


@pytest.mark.slow
def test_fad_test_keeps_the_training_runs_config(synthetic_root, tmp_path):
    out = tmp_path / "run"
    path, args = _weights(synthetic_root, out)
    (out / "config.yaml").write_text("the training run's config\n")
    run = _tool("test_net", [*args, "MODEL.WEIGHT", path])
    assert run.returncode == 0, run.stderr[-2000:]
    assert (out / "config.yaml").read_text() == "the training run's config\n"
    assert "MIN_SIZE_TEST: 96" in (out / "config_test.yaml").read_text()
