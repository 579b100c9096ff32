"""A two-iteration search on the synthetic data: genotype.log, diagrams, alpha pictures and
histories, checkpoints, exact resume; a second-order search through the shared loop."""
import os

import pytest
import torch

from fad.config import get_cfg_defaults
from fad.engine.checkpoint import Checkpointer
from fad.nas.genotype import read_genotype_file
from fad.search.derive import derive_genotype
from fad.search.engine import run_search
from fad.search.visuals import ALPHAS_PNG, GENOTYPE_HISTORY, WINNING_OPS_PNG, read_genotype_history
from fad.utils.seed import seed_everything

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_search_cfg(root: str, out: str, max_iter: int):
    cfg = get_cfg_defaults()
    cfg.merge_from_file(os.path.join(REPO, "configs", "fad", "search",
                                     "fad-fcos_tiny_synthetic.yaml"))
    cfg.merge_from_list([
        "DATASETS.ROOT", root, "OUTPUT_DIR", out, "MODEL.DEVICE", "cpu",
        "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.FAD.TOWER_CHANNELS", 32,
        "MODEL.FAD.EDGE_CHANNELS", 32, "INPUT.MIN_SIZE_TRAIN", (64,),
        "INPUT.MAX_SIZE_TRAIN", 96, "SOLVER.IMS_PER_BATCH", 1, "SOLVER.MAX_ITER", max_iter,
        "SOLVER.CHECKPOINT_PERIOD", 1, "SOLVER.LOG_PERIOD", 1, "SOLVER.WARMUP_ITERS", 1,
        "SEARCH.ARCH_LR", 0.01,
    ])
    return cfg


def _alphas(state):
    return {k: v for k, v in state["model"].items() if "alphas" in k}


@pytest.mark.slow
def test_two_iteration_search_writes_genotypes_and_resumes(synthetic_root, tmp_path):
    out = str(tmp_path / "search")
    seed_everything(0)
    box, cls = run_search(tiny_search_cfg(synthetic_root, out, 2), torch.device("cpu"))
    with open(os.path.join(out, "genotype.log")) as f:
        lines = f.read().splitlines()
    assert len(lines) == 2 and all(line.startswith("Genotype(normal=[[") for line in lines)
    assert read_genotype_file(os.path.join(out, "genotype.log"), num_nodes=3) == (box, cls)
    for tower in ("box", "cls"):
        with open(os.path.join(out, f"genotype_{tower}.gv")) as f:
            source = f.read()
        assert "search iteration 2" in source and "c<SUB>k-2</SUB>" in source
    assert any(name.startswith("events") for name in os.listdir(os.path.join(out, "tb")))

    first = Checkpointer.load(os.path.join(out, "model_0000001.pth"))
    final = Checkpointer.load(os.path.join(out, "model_final.pth"))
    assert final["iteration"] == 2 and first["iteration"] == 1
    arch_state = final["arch_optimizer"]["state"]
    assert len(arch_state) == 6 and all(int(s["step"]) == 2 for s in arch_state.values())
    assert final["optimizer"]["state"]
    a1, a2 = _alphas(first), _alphas(final)
    assert len(a2) == 6 and any(not torch.equal(a1[k], a2[k]) for k in a2)
    box_alphas = [a2[f"detector.head.box_tower.alphas.{i}"] for i in range(3)]
    assert derive_genotype(box_alphas) == box

    box3, _ = run_search(tiny_search_cfg(synthetic_root, out, 3), torch.device("cpu"), resume=True)
    resumed = Checkpointer.load(os.path.join(out, "model_final.pth"))
    assert resumed["iteration"] == 3
    assert all(int(s["step"]) == 3 for s in resumed["arch_optimizer"]["state"].values())
    assert read_genotype_file(os.path.join(out, "genotype.log"))[0] == box3
    history = read_genotype_history(os.path.join(out, GENOTYPE_HISTORY))
    assert [it for it, _, _ in history] == [1, 2, 3] and history[-1][1] == box3
    assert history[1][1:] == (box, cls)  # the pair of every checkpoint, resume included
    for name in (ALPHAS_PNG, WINNING_OPS_PNG):
        assert os.path.getsize(os.path.join(out, name)) > 0

    straight_out = str(tmp_path / "straight")
    seed_everything(0)
    run_search(tiny_search_cfg(synthetic_root, straight_out, 3), torch.device("cpu"))
    straight = Checkpointer.load(os.path.join(straight_out, "model_final.pth"))
    assert straight["model"].keys() == resumed["model"].keys()
    for k, v in straight["model"].items():
        assert torch.equal(v, resumed["model"][k]), k


@pytest.mark.slow
def test_second_order_search_runs_through_the_shared_loop(synthetic_root, tmp_path):
    """SEARCH.SECOND_ORDER: two unrolled alpha steps; SOLVER.AMP is ignored (fp32, see
    fad.engine.amp) and the genotypes are written after the final checkpoint."""
    out = str(tmp_path)
    cfg = tiny_search_cfg(synthetic_root, out, 2)
    cfg.merge_from_list(["SEARCH.SECOND_ORDER", True, "SOLVER.CHECKPOINT_PERIOD", 5,
                         "SOLVER.AMP", True, "SOLVER.AMP_CPU", True])
    box, cls = run_search(cfg, torch.device("cpu"))
    final = Checkpointer.load(os.path.join(out, "model_final.pth"))
    assert final["iteration"] == 2
    assert all(int(s["step"]) == 2 for s in final["arch_optimizer"]["state"].values())
    assert not any(name.startswith("model_000") for name in os.listdir(out))
    assert read_genotype_file(os.path.join(out, "genotype.log"), num_nodes=3) == (box, cls)
