"""User mistakes are one line that says what to fix: misspelt keys ("did you mean"), unknown
dataset names and malformed DATASETS.REGISTER entries, an unwritable OUTPUT_DIR (before any
work), a checkpoint that does not fit (which key, classes or genotype), a search config with an
unused DATASETS.TEST."""
import logging
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, tiny_fcos_cfg

from fad.cli import train as train_tool
from fad.config import get_cfg_defaults, load_config
from fad.config.catalog import check_dataset_names, resolve
from fad.engine.launch import check_output_dir
from fad.engine.tool import run_tool
from fad.errors import ConfigError
from fad.search import run_search

CONFIG = os.path.join(REPO, "configs", "fcos", "fcos_tiny_synthetic.yaml")


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_misspelt_keys_get_the_closest_known_key(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(None, ["SOLVER.MAX_ITERS", "3"])
    assert "unknown config key SOLVER.MAX_ITERS (did you mean SOLVER.MAX_ITER?)" in _one_line(info)
    bad = tmp_path / "bad.yaml"
    bad.write_text("DATASET:\n  TRAIN: ('x',)\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(bad))
    text = _one_line(info)
    assert "bad.yaml: unknown config key DATASET.TRAIN (did you mean DATASETS.TRAIN?)" in text
    with pytest.raises(ConfigError) as info:
        load_config(None, ["SOLVER.QWERTY", "3"])
    assert "did you mean" not in _one_line(info)  # nothing close: no guess


def test_unknown_dataset_names_and_bad_register_entries():
    cfg = get_cfg_defaults()
    with pytest.raises(ConfigError) as info:
        resolve("voc_2007_tset", cfg)
    assert "unknown dataset 'voc_2007_tset' (did you mean 'voc_2007_test'?)" in _one_line(info)
    for entry in ("mine:voc", "mine:yolo:/data", "mine:coco:/img", "voc_2007_test:voc:/d"):
        cfg.DATASETS.REGISTER = (entry,)
        with pytest.raises(ConfigError, match="DATASETS.REGISTER") as info:
            check_dataset_names(cfg, ["synthetic_coco_train"])
        _one_line(info)
    cfg.DATASETS.REGISTER = ("mine:voc:/data/MyVOC:train",)
    check_dataset_names(cfg, ["mine", "coco_2017_val"])


def test_output_dir_must_be_writable(tmp_path):
    check_output_dir(str(tmp_path / "new" / "dir"))
    assert (tmp_path / "new" / "dir").is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="OUTPUT_DIR .*file/out is not a writable folder"):
        check_output_dir(str(tmp_path / "file" / "out"))


def test_unwritable_output_dir_stops_the_tool_before_any_work(tmp_path):
    (tmp_path / "file").write_text("")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "train_net.py"),
                           "--config-file", CONFIG, "OUTPUT_DIR", str(tmp_path / "file" / "out")],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: OUTPUT_DIR "), proc.stderr
    assert "is not a writable folder" in lines[0] and proc.stdout == ""


def test_unknown_test_set_is_found_before_training(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        run_tool(lambda: train_tool.main(["--config-file", CONFIG, "OUTPUT_DIR", str(tmp_path),
                                          "DATASETS.TEST", "('synthetic_coco_vla',)"]))
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert "unknown dataset 'synthetic_coco_vla' (did you mean 'synthetic_coco_val'?)" in err
    assert not (tmp_path / "tb").exists()


def test_resume_with_another_head_names_the_key(synthetic_root, tmp_path, capsys):
    args = ["--config-file", CONFIG, "DATASETS.ROOT", synthetic_root, "OUTPUT_DIR", str(tmp_path),
            "MODEL.DEVICE", "cpu", "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.FCOS.NUM_CONVS", "1",
            "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128",
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "1",
            "--skip-test"]
    train_tool.main(args)
    with pytest.raises(SystemExit) as info:
        run_tool(lambda: train_tool.main([*args, "MODEL.FCOS.NUM_CONVS", "2", "--resume"]))
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert "the weights do not fit" in err
    assert "MODEL.FCOS.NUM_CONVS is 1 in the checkpoint, 2 here" in err
    assert err.strip() in (tmp_path / "log.txt").read_text()


def test_search_warns_that_it_does_not_use_datasets_test(synthetic_root, caplog):
    cfg = tiny_fcos_cfg(synthetic_root, "unused")
    cfg.DATASETS.TRAIN = ("not_a_set",)
    cfg.DATASETS.TEST = ("synthetic_voc_val",)
    with caplog.at_level(logging.WARNING, logger="fad"), pytest.raises(ConfigError):
        run_search(cfg, torch.device("cpu"))
    assert "DATASETS.TEST ('synthetic_voc_val',) is not used" in caplog.text
