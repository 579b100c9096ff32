"""setup.py declares every csrc/ folder as a package: building the pure-Python part warns about
no package "absent from the packages configuration" (issue #23 item 7: ~250 lines of
BuildBackendWarning at `pip install -e .`), and each kernel source lands in the build.

The build runs on a copy of the sources (setup.py, fad/, search/, augment/, csrc/) so that the
working tree gets no build/ folder.
"""
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

SKIP = shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info")


def test_build_declares_every_csrc_folder(tmp_path):
    for name in ("fad", "search", "augment", "csrc"):
        shutil.copytree(Path(REPO, name), tmp_path / name, ignore=SKIP)
    shutil.copy(Path(REPO, "setup.py"), tmp_path)
    run = subprocess.run([sys.executable, "-W", "always", "setup.py", "-q", "build_py", "-d",
                          "out"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "absent from" not in run.stdout + run.stderr
    sources = {p.relative_to(tmp_path / "csrc") for p in (tmp_path / "csrc").rglob("*")
               if p.suffix in (".h", ".cpp", ".cu")}
    built = {p.relative_to(tmp_path / "out" / "fad" / "_csrc")
             for p in (tmp_path / "out" / "fad" / "_csrc").rglob("*") if p.is_file()}
    assert Path("msda", "cuda", "msda_cuda.cu") in sources
    assert built == sources
