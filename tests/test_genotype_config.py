"""MODEL.FAD.GENOTYPE: `fad-train --genotype-file` fills the key, the run's config.yaml and its
checkpoints hold the genotype text, fad-test and fad-demo rebuild the searched model from the
checkpoint's config, checkpoints written before the key (a top-level `genotype`) still load,
and genotype files written before still parse."""
import os
from pathlib import Path

import pytest
import torch
from conftest import REPO
from yacs.config import CfgNode

from fad.cli.trained_model import load_trained_model
from fad.config import load_config
from fad.errors import ConfigError, GenotypeError
from fad.modeling import build_detector
from fad.modeling.fcos import fad_genotypes, resolve_genotype
from fad.nas.cells import AugmentTower
from fad.nas.genotype import read_genotype_file, read_genotype_text

AUGMENT = os.path.join(REPO, "configs", "fad", "augment", "fad-fcos_tiny_synthetic.yaml")
GENOTYPES = Path(REPO) / "configs" / "fad" / "genotypes"
PAPER = str(GENOTYPES / "fad_paper.log")
TINY = ["MODEL.DEVICE", "cpu", "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.FAD.TOWER_CHANNELS", "16",
        "MODEL.FAD.EDGE_CHANNELS", "8", "INPUT.MIN_SIZE_TRAIN", "(96,)",
        "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1",
        "SOLVER.STEPS", "(1,)", "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.IMS_PER_BATCH", "4"]


def _opts(root: str, out: Path) -> list[str]:
    return ["DATASETS.ROOT", root, "OUTPUT_DIR", str(out), *TINY]


def _is_searched(model: torch.nn.Module) -> bool:
    return isinstance(getattr(model.head, "box_tower", None), AugmentTower)


@pytest.fixture(scope="module")
def trained(synthetic_root, tmp_path_factory) -> Path:
    """model_final.pth of `fad-train --genotype-file fad_paper.log` (2 tiny iterations)."""
    from fad.cli.train import main

    out = tmp_path_factory.mktemp("fad_train")
    main(["--config-file", AUGMENT, "--genotype-file", PAPER, "--skip-test",
          *_opts(synthetic_root, out)])
    return out / "model_final.pth"


def test_train_stores_the_genotype_text_in_config_yaml_and_checkpoints(trained):
    text = read_genotype_text(PAPER)
    with open(trained.parent / "config.yaml", encoding="utf-8") as f:
        assert CfgNode.load_cfg(f).MODEL.FAD.GENOTYPE == text  # the text, not the path
    state = torch.load(trained, weights_only=False)
    assert "genotype" not in state
    stored = CfgNode.load_cfg(state["cfg"])
    assert stored.MODEL.FAD.GENOTYPE == text
    model = build_detector(stored, len(state["classes"]))  # the stored config alone
    model.load_state_dict(state["model"])
    assert _is_searched(model)


def test_test_and_demo_rebuild_the_searched_model_from_the_checkpoint(
        trained, synthetic_root, tmp_path):
    """The config given to fad-test / fad-demo names no genotype: it comes from the checkpoint."""
    from fad.cli.demo import main as demo
    from fad.cli.test import main as test

    weight = ["MODEL.WEIGHT", str(trained), "MODEL.FCOS.SCORE_THRESH", "0.0"]
    test(["--config-file", AUGMENT, *_opts(synthetic_root, tmp_path / "test"), *weight])
    assert "using the genotype stored in" in (tmp_path / "test" / "log.txt").read_text()
    assert (tmp_path / "test" / "inference" / "synthetic_coco_val" / "metrics.json").is_file()
    image = Path(synthetic_root) / "synthetic_voc" / "JPEGImages" / "val_000002.jpg"
    records = demo(["--config-file", AUGMENT, *TINY, *weight, "--input", str(image),
                    "--output", str(tmp_path / "demo"), "--score-threshold", "0.0"])
    assert len(records) == 1 and records[0]["detections"]
    assert "using the genotype stored in" in (tmp_path / "demo" / "log.txt").read_text()
    cfg = load_config(AUGMENT, [*TINY, *weight])
    assert _is_searched(load_trained_model(cfg).model)


def test_a_checkpoint_written_before_the_key_still_loads(tmp_path):
    """The old way: the genotype text at the top level, no MODEL.FAD.GENOTYPE in its config."""
    text = read_genotype_text(PAPER)
    trained = load_config(AUGMENT, [*TINY, "MODEL.FAD.GENOTYPE", text])
    torch.manual_seed(0)
    model = build_detector(trained, 3)
    old_cfg = trained.clone()
    del old_cfg.MODEL.FAD["GENOTYPE"]
    assert "GENOTYPE" not in old_cfg.dump()
    path = tmp_path / "old.pth"
    torch.save({"model": model.state_dict(), "cfg": old_cfg.dump(), "classes": ["a", "b", "c"],
                "genotype": text, "iteration": 7}, path)
    cfg = load_config(AUGMENT, [*TINY, "MODEL.WEIGHT", str(path)])
    loaded = load_trained_model(cfg)  # the config names no genotype: the checkpoint's is used
    assert _is_searched(loaded.model) and loaded.iteration == 7
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value), name
    assert loaded.model.head.parallel_levels == 0
    levels = load_config(AUGMENT, [*TINY, "MODEL.WEIGHT", str(path),
                                   "SOLVER.PARALLEL_HEAD_LEVELS", "True"])
    assert load_trained_model(levels).model.head.parallel_levels == 1  # evaluates on two threads


def test_resolve_genotype_turns_a_path_into_the_text(tmp_path):
    text = read_genotype_text(PAPER)
    cfg = load_config(AUGMENT, ["MODEL.FAD.GENOTYPE", PAPER])
    assert cfg.MODEL.FAD.GENOTYPE == PAPER
    assert fad_genotypes(cfg) == read_genotype_file(PAPER)  # the builder reads a path too
    resolve_genotype(cfg)
    assert cfg.MODEL.FAD.GENOTYPE == text and fad_genotypes(cfg) == read_genotype_file(PAPER)
    resolve_genotype(cfg)
    assert cfg.MODEL.FAD.GENOTYPE == text
    other = tmp_path / "other.log"
    other.write_text(text.replace("('std_conv_3x3', 2)", "('std_conv_3x3_x2', 2)", 1))
    resolve_genotype(cfg, str(other))  # --genotype-file wins over the key
    assert cfg.MODEL.FAD.GENOTYPE == other.read_text()
    plain = load_config(AUGMENT)
    resolve_genotype(plain)
    assert plain.MODEL.FAD.GENOTYPE == "" and fad_genotypes(plain) is None
    with pytest.raises(GenotypeError, match="nope.log: genotype file not found"):
        resolve_genotype(load_config(AUGMENT, ["MODEL.FAD.GENOTYPE", str(tmp_path / "nope.log")]))
    with pytest.raises(ConfigError, match="needs MODEL.META_ARCHITECTURE FCOS, got ASAG"):
        resolve_genotype(load_config(AUGMENT, ["MODEL.META_ARCHITECTURE", "ASAG"]), PAPER)


@pytest.mark.parametrize("path", sorted(GENOTYPES.glob("*.log")), ids=lambda p: p.name)
def test_genotype_files_written_before_still_build(path):
    cfg = load_config(AUGMENT, [*TINY, "MODEL.FAD.GENOTYPE", str(path)])
    resolve_genotype(cfg)
    assert fad_genotypes(cfg) == read_genotype_file(str(path), num_nodes=3)
    assert _is_searched(build_detector(cfg, 2))
