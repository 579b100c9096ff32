"""Config files: `_BASE_` inheritance, and every shipped config builds its model and trains a
step."""
import os
from pathlib import Path

import pytest
import torch
from conftest import REPO
from yacs.config import CfgNode

from fad.cli.device_audit import fake_batch
from fad.config import get_cfg_defaults, load_config
from fad.config.build import merge_config_file
from fad.engine.trainer import DetectorStep
from fad.errors import ConfigError
from fad.modeling import build_detector
from fad.modeling.fcos import TowerHead
from fad.search import build_supernet
from fad.search.engine import SearchStep
from fad.search.supernet import Supernet

CONFIGS = Path(REPO) / "configs"
PAPER_GENOTYPE = CONFIGS / "fad" / "genotypes" / "fad_paper.log"


def _shipped() -> list[Path]:
    """Every yaml under configs/ except the `Base-*` fragments (only used through `_BASE_`)."""
    return sorted(p for p in CONFIGS.rglob("*.yaml") if not p.name.startswith("Base-"))


def test_base_chain_relative_paths_and_overrides(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "root.yaml").write_text("SOLVER:\n  MAX_ITER: 7\n  BASE_LR: 0.5\nSEED: 3\n")
    (tmp_path / "sub" / "mid.yaml").write_text('_BASE_: "../root.yaml"\nSOLVER:\n  MAX_ITER: 8\n')
    (tmp_path / "sub" / "leaf.yaml").write_text("_BASE_: mid.yaml\nSEED: 4\n")
    cfg = load_config(str(tmp_path / "sub" / "leaf.yaml"), ["SOLVER.BASE_LR", "0.25"])
    assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.BASE_LR, cfg.SEED) == (8, 0.25, 4)
    assert "_BASE_" not in cfg


def test_base_errors_name_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("_BASE_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_BASE_: a.yaml\nSEED: 1\n")
    with pytest.raises(ConfigError, match="include each other .*a.yaml -> .*b.yaml -> .*a.yaml"):
        load_config(str(tmp_path / "a.yaml"))
    (tmp_path / "self.yaml").write_text("_BASE_: self.yaml\n")
    with pytest.raises(ConfigError, match="remove the cycle"):
        load_config(str(tmp_path / "self.yaml"))
    (tmp_path / "lost.yaml").write_text("_BASE_: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml not found"):
        load_config(str(tmp_path / "lost.yaml"))
    (tmp_path / "base.yaml").write_text("SOLVER:\n  NOPE: 1\n")
    (tmp_path / "child.yaml").write_text("_BASE_: base.yaml\n")
    with pytest.raises(ConfigError, match=r"base.yaml: unknown config key SOLVER.NOPE"):
        load_config(str(tmp_path / "child.yaml"))
    (tmp_path / "list.yaml").write_text("_BASE_: [base.yaml]\n")
    with pytest.raises(ConfigError, match="must name one yaml file"):
        load_config(str(tmp_path / "list.yaml"))


def test_every_base_fragment_is_used():
    bases = {p.name for p in CONFIGS.rglob("Base-*.yaml")}
    used = {line.split(":", 1)[1].strip().strip('"').rsplit("/", 1)[-1]
            for p in CONFIGS.rglob("*.yaml") for line in p.read_text().splitlines()
            if line.startswith("_BASE_:")}
    assert bases and bases <= used


def _leaves(node: dict, prefix: str = "") -> dict:
    """{"A.B.C": value} of a nested yaml mapping."""
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def test_variants_hold_only_what_differs():
    """A file with a `_BASE_` sets no key to the value its base already gives."""
    variants = [p for p in CONFIGS.rglob("*.yaml") if "_BASE_" in p.read_text()]
    assert len(variants) >= 15
    for path in variants:
        with open(path) as f:
            data = CfgNode.load_cfg(f)
        base, mine = get_cfg_defaults(), get_cfg_defaults()  # fragments need not validate alone
        merge_config_file(base, str(path.parent / data.pop("_BASE_")))
        merge_config_file(mine, str(path))
        for key in _leaves(data):
            node_base, node_mine = base, mine
            for part in key.split("."):
                node_base, node_mine = node_base[part], node_mine[part]
            assert node_base != node_mine, f"{path}: {key} repeats its base's value"


def _build(path: Path) -> torch.nn.Module:
    """The model of a shipped config, with no download: pretrained weights off; the augment
    configs with the paper's genotype (MODEL.FAD.GENOTYPE, as `--genotype-file` sets it)."""
    rel = path.relative_to(CONFIGS).as_posix()
    augment = ["MODEL.FAD.GENOTYPE", str(PAPER_GENOTYPE)] if rel.startswith("fad/augment/") else []
    cfg = load_config(str(path), ["MODEL.BACKBONE.PRETRAINED", "", "MODEL.DEVICE", "cpu", *augment])
    if rel.startswith("fad/search/"):
        return build_supernet(cfg, 3)
    model = build_detector(cfg, 3)
    assert isinstance(getattr(model, "head", None), TowerHead) == bool(augment), rel
    return model


@pytest.mark.slow  # ~25 s for all of them on a busy 2-core CPU (ResNet-101 inits)
@pytest.mark.parametrize("path", _shipped(), ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_every_shipped_config_builds_its_model_and_trains_a_step(path):
    torch.manual_seed(0)
    model = _build(path)
    assert sum(p.numel() for p in model.parameters()) > 0
    cfg = load_config(str(path))
    assert os.path.basename(cfg.OUTPUT_DIR)
    cfg.defrost()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 96, 128  # fake_batch's sizes: a small step
    batch = fake_batch(cfg, 3)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.train()
    if isinstance(model, Supernet):
        out = SearchStep(cfg, model, torch.device("cpu")).run((batch, batch))
    else:
        out = DetectorStep(cfg, model, torch.device("cpu")).run(batch)
    assert all(torch.isfinite(v).all() for v in out.losses.values())
    moved = [n for n, p in model.named_parameters()
             if n in before and not torch.equal(p, before[n])]
    assert moved, "no parameter moved in the training step"
