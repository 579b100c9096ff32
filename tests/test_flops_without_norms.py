"""The FLOP counts of `fad.nas.flops` drop the norms before counting (fast on meta) and still
equal the count of the full modules, norms included."""
from __future__ import annotations

import torch
from torch import nn

from fad.config import load_config
from fad.data.transforms import padded_size
from fad.modeling.fcos import build_fad_head
from fad.nas import cells
from fad.nas.flops import (
    _fpn_features,
    count_flops,
    edge_flops,
    head_flops,
    level_sizes,
    without_norms,
)
from fad.nas.genotype import read_genotype_file

PAPER = "configs/fad/genotypes/fad_paper.log"


def _cfg():
    cfg = load_config("configs/fad/search/fad-fcos_tiny_synthetic.yaml", [])
    cfg.MODEL.FAD.TOWER_CHANNELS, cfg.MODEL.FAD.EDGE_CHANNELS = 32, 16
    return cfg


def test_without_norms_replaces_every_norm_and_nothing_else():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(4, 8), nn.ReLU(),
                        nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)))
    out = without_norms(net)
    assert out is net
    assert [type(m).__name__ for m in net.modules()] == [
        "Sequential", "Conv2d", "Identity", "ReLU", "Sequential", "Conv2d", "Identity"]


def test_head_count_equals_the_count_with_norms():
    cfg = _cfg()
    box, cls = read_genotype_file(PAPER)
    with torch.device("meta"):
        full = build_fad_head(cfg, 5, box, cls)
    assert any(isinstance(m, nn.GroupNorm) for m in full.modules())
    feats = _fpn_features(cfg, padded_size(cfg, (100, 150)))
    assert head_flops(cfg, 5, box, cls, (100, 150))["head"] == count_flops(full, feats) > 0


def test_edge_count_equals_the_count_with_norms():
    size = (128, 160)
    for op in ("sinSep_conv_3x3_x2+dil_conv_3x3", "std_conv_3x3_x3"):
        with torch.device("meta"):
            edge = cells.augment_edge(op, 32, 16)
        assert any(isinstance(m, nn.GroupNorm) for m in edge.modules())
        full = sum(count_flops(edge, torch.empty(1, 32, h, w, device="meta"))
                   for h, w in level_sizes(size))
        assert edge_flops(op, 32, 16, size) == full > 0
