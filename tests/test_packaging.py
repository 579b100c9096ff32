"""A non-editable install works from any folder: the wheel, installed into a fresh venv, has the
console commands, and `fad-train` trains a tiny detector for 2 iterations from a temp folder.

The fresh venv sees this venv's packages (torch & co.) through a .pth file, so nothing is
downloaded; the wheel is installed with --no-deps. The source is copied first so that building
the wheel leaves no build/ folder in the working tree.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
from conftest import REPO

COMMANDS = ("fad-search", "fad-train", "fad-test", "fad-eval", "fad-demo", "fad-visualize",
            "fad-bench", "fad-convert", "fad-make-data", "fad-check-data", "fad-device-audit")
_SKIP_ANYWHERE = shutil.ignore_patterns("*.egg-info", "__pycache__", ".ruff_cache",
                                        ".pytest_cache", "*.so")
_SKIP_AT_ROOT = shutil.ignore_patterns(".venv", ".git", "datasets", "output*", "build", "dist")


def _skip(folder: str, names: list[str]) -> set[str]:
    """What the copy leaves out: caches and builds anywhere; run outputs, data, the venv and
    git only at the repository's root (`fad/engine/output_dir.py` is source)."""
    skipped = _SKIP_ANYWHERE(folder, names)
    if os.path.samefile(folder, REPO):
        skipped |= _SKIP_AT_ROOT(folder, names)
    return skipped


def _run(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    run = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, f"{cmd}\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
    return run


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The bin/ folder of a fresh venv with the fad wheel installed (not editable)."""
    tmp = tmp_path_factory.mktemp("packaging")
    source = tmp / "src"
    shutil.copytree(REPO, source, ignore=_skip)
    wheels = tmp / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", str(wheels), str(source)], cwd=tmp)
    (wheel,) = wheels.glob("fad-*.whl")
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=False)
    site = subprocess.run([str(env_dir / "bin" / "python"), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # this venv's packages (torch, pip, ...) after the fresh venv's own site-packages
    Path(site, "base_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
          "--no-index", str(wheel)], cwd=tmp)
    return env_dir / "bin"


@pytest.mark.slow
def test_wheel_installs_console_commands(installed, tmp_path):
    where = _run([str(installed / "python"), "-c",
                  "import fad, fad.cli, fad.search, fad.augment; print(fad.__file__)"],
                 cwd=tmp_path).stdout
    assert str(installed.parent) in where and REPO not in where  # the installed copy
    for command in COMMANDS:
        assert (installed / command).is_file(), command
    assert "KEY VALUE" in _run([str(installed / "fad-train"), "--help"], cwd=tmp_path).stdout
    assert "--score-threshold" in _run([str(installed / "fad-demo"), "--help"],
                                       cwd=tmp_path).stdout
    assert "fcos_step" in _run([str(installed / "fad-bench"), "--help"], cwd=tmp_path).stdout


@pytest.mark.slow
def test_installed_fad_train_runs_from_another_folder(installed, synthetic_root, tmp_path):
    config = os.path.join(REPO, "configs", "fcos", "fcos_tiny_synthetic.yaml")
    _run([str(installed / "fad-train"), "--config-file", config, "DATASETS.ROOT", synthetic_root,
          "OUTPUT_DIR", "out", "MODEL.DEVICE", "cpu", "MODEL.FPN.OUT_CHANNELS", "32",
          "MODEL.FCOS.NUM_CONVS", "1", "INPUT.MIN_SIZE_TRAIN", "(96,)",
          "INPUT.MAX_SIZE_TRAIN", "128", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2",
          "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "(1,)", "--skip-test"], cwd=tmp_path)
    assert (tmp_path / "out" / "model_final.pth").is_file()
    assert "iter: 2/2" in (tmp_path / "out" / "log.txt").read_text()
