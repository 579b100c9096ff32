"""tools/search_net.py end to end (first and second order) and tools/visualize_genotype.py."""
import os
import subprocess
import sys

import pytest
from conftest import REPO

from fad.nas.genotype import read_genotype_file

SEARCH_CONFIG = os.path.join(REPO, "configs", "fad", "search", "fad-fcos_tiny_synthetic.yaml")
TINY_SEARCH = ["MODEL.DEVICE", "cpu", "MODEL.FPN.OUT_CHANNELS", "16",
               "MODEL.FAD.TOWER_CHANNELS", "16", "MODEL.FAD.EDGE_CHANNELS", "8",
               "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96",
               "SOLVER.IMS_PER_BATCH", "1", "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "2",
               "SOLVER.WARMUP_ITERS", "1", "SOLVER.LOG_PERIOD", "1"]


def tool(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", name), *args],
                          capture_output=True, text=True, cwd=REPO)


@pytest.mark.slow
@pytest.mark.parametrize("second_order", [False, True])
def test_search_net_writes_genotype_and_diagrams(synthetic_root, tmp_path, second_order):
    out = tmp_path / "search"
    run = tool("search_net.py", "--config-file", SEARCH_CONFIG, "DATASETS.ROOT", synthetic_root,
               "OUTPUT_DIR", str(out), *TINY_SEARCH, "SEARCH.SECOND_ORDER", str(second_order))
    assert run.returncode == 0, run.stderr[-2000:]
    box, cls = read_genotype_file(str(out / "genotype.log"), num_nodes=3)
    assert box.num_nodes == cls.num_nodes == 3
    for tower in ("box", "cls"):
        assert (out / f"genotype_{tower}.gv").read_text().startswith("digraph")
    assert (out / "model_final.pth").is_file() and "search done" in run.stdout


def test_visualize_genotype_draws_both_towers(tmp_path):
    paper = os.path.join(REPO, "configs", "fad", "genotypes", "fad_paper.log")
    run = tool("visualize_genotype.py", paper, "--out", str(tmp_path), "--format", "svg")
    assert run.returncode == 0, run.stderr[-2000:]
    for tower in ("box", "cls"):
        source = (tmp_path / f"{tower}_tower.gv").read_text()
        assert source.startswith("digraph") and "fad_paper.log" in source
        assert str(tmp_path / f"{tower}_tower.gv") in run.stdout


def test_visualize_draws_without_torchvision(tmp_path):
    """Drawing needs no detector: the command leaves torchvision (and its ~1.5 s import) to
    `--input-size`, whose GFLOPs line builds the head (tests/test_search_cost.py checks it)."""
    paper = os.path.join(REPO, "configs", "fad", "genotypes", "fad_paper.log")
    code = ("import sys; from fad.cli.visualize import main; main(sys.argv[1:]); "
            "print('torchvision loaded:', 'torchvision' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code, paper, "--out", str(tmp_path), "--format",
                          "svg"], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().endswith("torchvision loaded: False")
    assert (tmp_path / "box_tower.gv").is_file() and (tmp_path / "cls_tower.gv").is_file()
