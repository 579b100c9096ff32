"""The tools' one error path: bad input is one `error: ...` line and exit code 2, flags work
before or after the KEY VALUE overrides, and no tool needs sys.path tricks."""
import os
import subprocess
import sys

import pytest
from conftest import REPO, load_tool

from fad.engine.launch import default_argument_parser, parse_args
from fad.engine.tool import run_tool

TOOLS = os.path.join(REPO, "tools")
CONFIG = os.path.join(REPO, "configs", "fcos", "fcos_tiny_synthetic.yaml")


def _fails_in_one_line(capsys, name: str, *argv: str) -> str:
    """Run tool `name` through run_tool; assert exit code 2 and one stderr line; return it."""
    main = load_tool(name).main
    with pytest.raises(SystemExit) as info:
        run_tool(lambda: main(list(argv)))
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_flags_before_or_after_overrides():
    parser = default_argument_parser("t", genotype_file=True)
    parser.add_argument("--resume", action="store_true")
    args = parse_args(parser, ["OUTPUT_DIR", "out", "--resume", "SEED", "-1",
                               "--config-file", "a.yaml"])
    assert args.resume and args.config_file == "a.yaml"
    assert args.opts == ["OUTPUT_DIR", "out", "SEED", "-1"]
    assert "KEY VALUE" in parser.format_help()


@pytest.mark.parametrize("name", ["train_net", "test_net", "search_net"])
def test_config_tools_reject_a_bad_key(capsys, tmp_path, name):
    err = _fails_in_one_line(capsys, name, "--config-file", CONFIG, "SOLVER.NOPE", "1",
                             "OUTPUT_DIR", str(tmp_path))
    assert "SOLVER.NOPE" in err
    err = _fails_in_one_line(capsys, name, "--config-file", str(tmp_path / "missing.yaml"))
    assert "missing.yaml not found" in err


def test_error_is_also_in_log_txt(capsys, tmp_path):
    err = _fails_in_one_line(capsys, "test_net", "--config-file", CONFIG,
                             "OUTPUT_DIR", str(tmp_path), "MODEL.WEIGHT", str(tmp_path / "x.pth"))
    assert "x.pth does not exist" in err
    assert err.strip() in (tmp_path / "log.txt").read_text()


def test_other_tools_share_the_error_path(capsys, tmp_path):
    err = _fails_in_one_line(capsys, "visualize_genotype", str(tmp_path / "none.log"))
    assert "none.log: genotype file not found" in err
    err = _fails_in_one_line(capsys, "eval_detections", "coco", "--gt", str(tmp_path / "gt.json"),
                             "--dets", "d.json", "--out", str(tmp_path / "m.json"))
    assert "gt.json: ground-truth annotation file not found" in err


def test_scripts_run_without_path_tricks():
    for name in os.listdir(TOOLS):
        if name.endswith(".py"):
            with open(os.path.join(TOOLS, name), encoding="utf-8") as f:
                text = f.read()
            assert "sys.path.insert" not in text and "sys.path.append" not in text, name
    assert not os.path.exists(os.path.join(TOOLS, "_common.py"))


@pytest.mark.slow
def test_search_net_data_error_is_one_line(synthetic_root, tmp_path):
    """A corrupt annotation stops tools/search_net.py with one line, exit 2, no traceback."""
    root = tmp_path / "synthetic_voc"
    subprocess.run(["cp", "-r", os.path.join(synthetic_root, "synthetic_voc"), str(root)],
                   check=True)
    xml = sorted((root / "Annotations").iterdir())[0]
    xml.write_text("<annotation><object><name>")
    cfg = os.path.join(REPO, "configs", "fad", "search", "fad-fcos_tiny_synthetic.yaml")
    run = subprocess.run([sys.executable, os.path.join(TOOLS, "search_net.py"), "--config-file",
                          cfg, "DATASETS.ROOT", str(tmp_path), "OUTPUT_DIR", str(tmp_path / "o"),
                          "MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER", "1"],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and xml.name in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("error: ")


@pytest.mark.parametrize("ending", ["finished", "bad input"])
def test_run_tool_leaves_the_process_group_it_joined(tmp_path, ending):
    """A tool run under torchrun leaves its process group however it ends (a gloo rank that
    exits with its threads running can abort after its work is done)."""
    import torch.distributed as dist

    from fad.errors import ConfigError

    def main():
        if ending == "bad input":
            raise ConfigError("bad")

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0,
                            world_size=1)
    try:
        if ending == "bad input":
            with pytest.raises(SystemExit):
                run_tool(main)
        else:
            run_tool(main)
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
