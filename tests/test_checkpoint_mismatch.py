"""Why a checkpoint does not fit the model: the config keys that change its parameters are found
by building it on the meta device (no hand list), the decisive difference leads the one line and
the rest go to log.txt (issue #21 item 3, issue #23 items 4 and 5)."""
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO

from fad.config import load_config
from fad.engine.checkpoint import load_model_weights
from fad.engine.mismatch import mismatch_reasons, stored_genotype, weights_difference
from fad.errors import CheckpointError
from fad.modeling import build_detector
from fad.search.supernet import build_supernet

ASAG = "configs/asag/tiny_synthetic.yaml"
SPARSE = "configs/sparse_detr/tiny_synthetic.yaml"
DETR = "configs/deformable_detr/tiny_synthetic.yaml"
FCOS = "configs/fcos/fcos_tiny_synthetic.yaml"
FAD = "configs/fad/augment/fad-fcos_tiny_synthetic.yaml"
PAPER = os.path.join(REPO, "configs", "fad", "genotypes", "fad_paper.log")
FIT = "use the config (and genotype) it was trained with"


def _cfg(path: str, *opts: str):
    return load_config(os.path.join(REPO, path),
                       ["MODEL.BACKBONE.PRETRAINED", "", "MODEL.DEVICE", "cpu", *opts])


def _paper() -> str:
    with open(PAPER, encoding="utf-8") as f:
        return f.read()


def _checkpoint(cfg, num_classes: int = 3) -> dict:
    """What the trainer stores: weights, config dump, class names."""
    return {"model": build_detector(cfg, num_classes).state_dict(), "cfg": cfg.dump(),
            "classes": [f"c{i}" for i in range(num_classes)]}


def _error(cfg, state: dict, num_classes: int = 3) -> str:
    """The CheckpointError of loading `state` into the model of `cfg` (as the tools load)."""
    model = build_detector(cfg, num_classes)
    with pytest.raises(CheckpointError) as info:
        load_model_weights(model, state, "w.pth", cfg=cfg, classes=["c"] * num_classes,
                           genotype=cfg.MODEL.FAD.GENOTYPE)
    text = str(info.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("key,theirs,ours", [("MODEL.ASAG.HIDDEN_DIM", "32", "64"),
                                             ("MODEL.ASAG.NUM_QUERIES", "300", "100")])
def test_an_asag_checkpoint_of_another_size_names_the_key(key, theirs, ours):
    err = _error(_cfg(ASAG), _checkpoint(_cfg(ASAG, key, theirs)))
    assert err == (f"w.pth: the weights do not fit the model of this config ({key} is {theirs} in "
                   f"the checkpoint, {ours} here); {FIT}")


def test_only_keys_that_change_parameters_count():
    now = _cfg(SPARSE)
    model = build_detector(now, 3)
    for key, found in (("MODEL.DETR.EFF_QUERY_INIT", True), ("MODEL.DETR.USE_ENC_AUX_LOSS", True),
                       ("MODEL.DETR.RHO", False), ("SOLVER.BASE_LR", False)):
        value = "0.3" if key == "MODEL.DETR.RHO" else "0.1" if key.startswith("SOLVER") else "False"
        state = {"cfg": _cfg(SPARSE, key, value).dump()}
        reasons = mismatch_reasons(state, model, now, ["a", "b", "c"], "")
        assert reasons == ([f"{key} is False in the checkpoint, True here"] if found else []), key
    # a foreign checkpoint (no config dump) has nothing to compare
    assert mismatch_reasons({"model": {}}, model, now, ["a", "b", "c"], "") == []


def test_reasons_come_architecture_then_genotype_then_classes():
    paper = _paper()
    other = paper.replace("sinSep_conv_3x3_x3", "std_conv_3x3", 1)  # first (box) line only
    now = _cfg(FAD, "MODEL.FAD.GENOTYPE", other)
    trained = _cfg(FAD, "MODEL.FAD.GENOTYPE", paper, "MODEL.FAD.BOX_CELLS", "3",
                   "MODEL.BACKBONE.DEPTH", "34")
    reasons = mismatch_reasons({"cfg": trained.dump(), "classes": ["a", "b"]},
                               build_detector(now, 3), now, ["a", "b", "c"], other)
    assert reasons == ["MODEL.BACKBONE.DEPTH is 34 in the checkpoint, 18 here",
                       "the box tower of the genotype of --genotype-file / MODEL.FAD.GENOTYPE "
                       "differs from the checkpoint's",
                       "MODEL.FAD.BOX_CELLS is 3 in the checkpoint, 2 here",
                       "2 classes in the checkpoint, 3 here"]
    same = {"cfg": now.dump(), "classes": ["x", "y", "z"]}
    assert mismatch_reasons(same, build_detector(now, 3), now, ["a", "b", "c"], other + "\n") == []


def test_the_genotype_of_old_and_new_checkpoints():
    paper, plain = _paper(), _cfg(FCOS)
    assert stored_genotype({"cfg": _cfg(FAD, "MODEL.FAD.GENOTYPE", paper).dump()}) == paper
    assert stored_genotype({"cfg": plain.dump(), "genotype": paper}) == paper  # before the key
    assert stored_genotype({"model": {}}) == ""
    model = build_detector(plain, 3)
    assert mismatch_reasons({"cfg": plain.dump(), "genotype": paper}, model, plain, None, "") == [
        "the checkpoint has searched towers (it stores a genotype), this model plain ones"]


def test_weights_summary_when_nothing_else_explains():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3))
    state = {"model": torch.nn.Sequential(torch.nn.Linear(4, 3)).state_dict()}
    with pytest.raises(CheckpointError) as info:
        load_model_weights(model, state, "w.pth")
    assert str(info.value) == ("w.pth: the weights do not fit the model of this config (1 of "
                               "another shape, e.g. 0.weight [3, 4] in the checkpoint, [3, 2] "
                               f"here); {FIT}")
    extra = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1)).state_dict()
    assert weights_difference(model.state_dict(), extra) == "2 not in the model, e.g. 1.weight"


def _tool(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", name), *args],
                          capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def _one_error_line(run: subprocess.CompletedProcess) -> str:
    assert run.returncode == 2, run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr[-2000:]
    return lines[0]


def test_detr_weights_in_an_fcos_config_lead_with_the_architecture(tmp_path):
    weights = tmp_path / "detr.pth"
    torch.save(_checkpoint(_cfg(DETR)), weights)
    run = _tool("test_net.py", "--config-file", os.path.join(REPO, FCOS), "MODEL.WEIGHT",
                str(weights), "OUTPUT_DIR", str(tmp_path / "out"), "MODEL.DEVICE", "cpu")
    line = _one_error_line(run)
    more = [r for r in (tmp_path / "out" / "log.txt").read_text().splitlines()
            if "differs from this run: " in r]
    assert line == (f"error: {weights}: the weights do not fit the model of this config "
                    "(MODEL.META_ARCHITECTURE is DeformableDETR in the checkpoint, FCOS here; "
                    f"and {len(more) - 1} more, listed in log.txt); {FIT}")
    assert len(more) >= 2 and more[0].endswith("MODEL.META_ARCHITECTURE is DeformableDETR in the "
                                                "checkpoint, FCOS here")


@pytest.mark.slow
def test_plain_fcos_weights_with_a_genotype_file_lead_with_the_genotype(synthetic_root, tmp_path):
    plain = _cfg(FAD)  # the augment config without a genotype: plain FCOS towers
    weights = tmp_path / "plain.pth"
    torch.save(_checkpoint(plain), weights)
    run = _tool("train_net.py", "--config-file", os.path.join(REPO, FAD), "--genotype-file", PAPER,
                "MODEL.WEIGHT", str(weights), "DATASETS.ROOT", synthetic_root, "OUTPUT_DIR",
                str(tmp_path / "out"), "MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER", "1")
    line = _one_error_line(run)
    assert line.startswith(f"error: {weights}: the weights do not fit the model of this config "
                           "(the checkpoint has plain towers, this model searched ones (the "
                           "genotype of --genotype-file / MODEL.FAD.GENOTYPE)"), line
    assert "TOWER_CHANNELS" not in line and "EDGE_CHANNELS" not in line


def test_a_fad_checkpoint_in_a_detr_config_says_the_genotype_is_its_own(tmp_path):
    weights = tmp_path / "fad.pth"
    torch.save(_checkpoint(_cfg(FAD, "MODEL.FAD.GENOTYPE", _paper())), weights)
    run = _tool("test_net.py", "--config-file", os.path.join(REPO, DETR), "MODEL.WEIGHT",
                str(weights), "OUTPUT_DIR", str(tmp_path / "out"), "MODEL.DEVICE", "cpu")
    line = _one_error_line(run)
    assert line.startswith(f"error: {weights}: the weights do not fit the model of this config "
                           "(MODEL.META_ARCHITECTURE is FCOS with searched towers (it stores a "
                           "genotype) in the checkpoint, DeformableDETR here"), line
    assert "--genotype-file" not in line


def test_a_search_checkpoint_is_explained_with_the_supernet_builder():
    search = "configs/fad/search/fad-fcos_tiny_synthetic.yaml"
    now, trained = _cfg(search), _cfg(search, "MODEL.FAD.NUM_NODES", "2")
    state = {"model": build_supernet(trained, 3).state_dict(), "cfg": trained.dump()}
    with pytest.raises(CheckpointError) as info:
        load_model_weights(build_supernet(now, 3), state, "s.pth", cfg=now,
                           build=lambda c: build_supernet(c, 3))
    assert str(info.value) == ("s.pth: the weights do not fit the model of this config "
                               f"(MODEL.FAD.NUM_NODES is 2 in the checkpoint, 3 here); {FIT}")
