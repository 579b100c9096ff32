"""A finished run is never overwritten by accident: fad-train / fad-search refuse an OUTPUT_DIR
that holds checkpoints unless --resume or --overwrite, and --overwrite deletes only our files
(issue #23 item 1)."""
import os
import subprocess
import sys

import pytest
from conftest import REPO, load_tool
from test_tools_search import SEARCH_CONFIG, TINY_SEARCH
from test_tools_train_test import TINY

from fad.engine.output_dir import check_run_folder, clear_run_files
from fad.engine.tool import run_tool
from fad.errors import ConfigError

FCOS = os.path.join(REPO, "configs", "fcos", "fcos_tiny_synthetic.yaml")


def _tool(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", name), *args],
                          capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def _files(folder) -> set[str]:
    """Every file under `folder`, relative to it."""
    return {os.path.relpath(os.path.join(root, n), folder)
            for root, _, names in os.walk(folder) for n in names}


def _finished_run(folder) -> bytes:
    """A folder as a finished run leaves it (checkpoint contents do not matter to the check)."""
    folder.mkdir(exist_ok=True)
    for name in ("model_0000100.pth", "model_final.pth"):
        (folder / name).write_bytes(b"weights of " + name.encode())
    (folder / "last_checkpoint").write_text("model_final.pth")
    (folder / "config.yaml").write_text("OUTPUT_DIR: earlier\n")
    return (folder / "model_final.pth").read_bytes()


@pytest.mark.parametrize("name", ["train_net.py", "search_net.py"])
def test_a_finished_run_is_not_overwritten(tmp_path, name):
    kept = _finished_run(tmp_path)
    config = SEARCH_CONFIG if name == "search_net.py" else FCOS
    run = _tool(name, "--config-file", config, "OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", "2")
    assert run.returncode == 2 and run.stdout == "", run.stderr[-2000:]
    assert run.stderr == (f"error: OUTPUT_DIR {tmp_path} holds the checkpoints of an earlier run "
                          "(model_final.pth and 1 more); add --resume to continue it, --overwrite "
                          "to delete its files and start again, or give another OUTPUT_DIR\n")
    assert (tmp_path / "model_final.pth").read_bytes() == kept
    assert (tmp_path / "config.yaml").read_text() == "OUTPUT_DIR: earlier\n"
    assert not (tmp_path / "log.txt").exists()
    both = _tool(name, "--config-file", config, "OUTPUT_DIR", str(tmp_path), "--resume",
                 "--overwrite")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_check_and_clear_know_our_files(tmp_path):
    check_run_folder(str(tmp_path / "new"), resume=False, overwrite=False)  # nothing there yet
    (tmp_path / "log.txt").write_text("a log without checkpoints is no finished run\n")
    check_run_folder(str(tmp_path), resume=False, overwrite=False)
    _finished_run(tmp_path)
    with pytest.raises(ConfigError, match=r"\(model_final.pth and 1 more\); add --resume"):
        check_run_folder(str(tmp_path), resume=False, overwrite=False)
    check_run_folder(str(tmp_path), resume=True, overwrite=False)
    check_run_folder(str(tmp_path), resume=False, overwrite=True)
    mine = {"model_1.pth", "notes.txt", "tb/my_plot.png", "inference/coco_val/my_eval.py"}
    ours = {"tb/events.out.tfevents.1.host", "tb/train_loss/events.out.tfevents.2.host",
            "inference/coco_val/metrics.json", "inference/voc_val/voc_results/comp4_det_val_a.txt",
            "genotype.log", "genotype_box.gv", ".tmp-abcmodel_final.pth"}
    for rel in mine | ours:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    before = _files(tmp_path)
    deleted = clear_run_files(str(tmp_path))
    assert {os.path.relpath(p, tmp_path) for p in deleted} == before - mine
    assert _files(tmp_path) == mine
    assert not (tmp_path / "tb" / "train_loss").exists()  # emptied folders of ours go
    assert not (tmp_path / "inference" / "voc_val").exists()


@pytest.mark.slow
def test_overwrite_clears_a_real_search_run_for_a_training_run(synthetic_root, tmp_path):
    """The search writes every kind of its files; --overwrite in fad-train removes them all and
    keeps the user's; the training run's own files (with its evaluation) are all ours too."""
    out = tmp_path / "run"
    load_tool("search_net").main(["--config-file", SEARCH_CONFIG, "DATASETS.ROOT", synthetic_root,
                                  "OUTPUT_DIR", str(out), *TINY_SEARCH,
                                  "SOLVER.CHECKPOINT_PERIOD", "1"])
    assert {"genotype.log", "alphas.png", "model_0000001.pth"} <= _files(out)
    (out / "notes.txt").write_text("mine")
    (out / "tb" / "mine.txt").write_text("mine too")
    train = load_tool("train_net").main
    args = ["--config-file", FCOS, "DATASETS.ROOT", synthetic_root, "OUTPUT_DIR", str(out), *TINY,
            "SOLVER.MAX_ITER", "1", "MODEL.FCOS.DETECTIONS_PER_IMG", "5"]
    with pytest.raises(SystemExit) as info:
        run_tool(lambda: train(args))
    assert info.value.code == 2 and (out / "genotype.log").is_file()
    train([*args, "--overwrite"])
    files = _files(out)
    assert "genotype.log" not in files and "alphas.png" not in files
    assert "model_0000001.pth" not in files  # the search's periodic checkpoint went too
    assert {"notes.txt", "tb/mine.txt", "model_final.pth",
            "inference/synthetic_coco_val/metrics.json"} <= files
    log = (out / "log.txt").read_text()
    assert "--overwrite: deleted the" in log and "search done" not in log
    clear_run_files(str(out))
    assert _files(out) == {"notes.txt", "tb/mine.txt"}
