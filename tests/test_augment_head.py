"""Augment stage: cells from genotypes, the searched head (MODEL.FAD.GENOTYPE), config checks, a
tiny training run."""
import os

import pytest
import torch
from conftest import REPO, train_steps
from torch import nn

from fad.config import get_cfg_defaults, load_config
from fad.errors import ConfigError, GenotypeError
from fad.modeling import build_detector
from fad.modeling.fcos import build_fad_head, resolve_genotype
from fad.nas.cells import AugmentCell
from fad.nas.genotype import Genotype, read_genotype_file, read_genotype_text
from fad.nas.primitives import FAMILIES, PRIMITIVES, PRIMITIVES_DIL3
from fad.search.cells import SearchCell
from fad.search.derive import derive_genotype

PAPER = os.path.join(REPO, "configs", "fad", "genotypes", "fad_paper.log")


def _cfg(fpn=32, tower=32, edge=32, **extra):
    cfg = get_cfg_defaults()
    cfg.merge_from_list(["MODEL.FPN.OUT_CHANNELS", fpn, "MODEL.FAD.TOWER_CHANNELS", tower,
                         "MODEL.FAD.EDGE_CHANNELS", edge] + [x for kv in extra.items() for x in kv])
    return cfg


def _features(n=2, c=32, sizes=((16, 12), (8, 6), (4, 3), (2, 2), (1, 1))):
    return [torch.randn(n, c, h, w) for h, w in sizes]


def test_paper_genotypes_build_and_run():
    box, cls = read_genotype_file(PAPER, num_nodes=3)
    head = build_fad_head(_cfg(), 5, box, cls)
    out = head(_features())
    hw = 16 * 12 + 8 * 6 + 4 * 3 + 2 * 2 + 1
    assert out["cls_logits"].shape == (2, hw, 5)
    assert out["bbox_regression"].shape == (2, hw, 4) and out["bbox_regression"].min() >= 0
    assert out["bbox_ctrness"].shape == (2, hw, 1)
    # 2 cells per tower, 6 edges each; the second cell's 96-wide s1 gets a 1x1 adapter
    first, second = head.box_tower.cells
    assert len(first.edges) == 6 and isinstance(first.pre1, nn.Identity)
    assert isinstance(second.pre1, nn.Sequential) and second.pre1[0].in_channels == 96
    assert head.box_tower.out_channels == head.cls_tower.out_channels == 96
    # paper widths: C = 96 edges in 256-wide towers
    big = build_fad_head(_cfg(256, 256, 96), 80, box, cls)
    edge = big.cls_tower.cells[0].edges[0]
    assert (edge[0].in_channels, edge[0].out_channels, edge[-1].out_channels) == (256, 96, 256)
    assert big.cls_logits.bias[0].item() == pytest.approx(-4.59512, abs=1e-4)


def test_searched_genotype_builds():
    torch.manual_seed(0)
    box = derive_genotype([torch.randn(i + 2, 11) for i in range(3)])
    cls = derive_genotype([torch.randn(i + 2, 11) for i in range(3)])
    head = build_fad_head(_cfg(), 3, box, cls)
    assert head(_features(1))["cls_logits"].shape[-1] == 3


def test_cls_gradients_reach_the_box_tower():
    box, cls = read_genotype_file(PAPER)
    head = build_fad_head(_cfg(), 3, box, cls)
    head(_features(1))["cls_logits"].sum().backward()
    assert head.box_reduce.weight.grad.abs().sum() > 0
    assert head.box_tower.cells[0].edges[0][0].weight.grad.abs().sum() > 0
    assert head.bbox_pred.weight.grad is None


def _tie(aug_cell: AugmentCell, search_cell: SearchCell, genotype: Genotype) -> None:
    k = 0
    for i, node in enumerate(genotype.normal):
        for op, src in node:
            mixed = search_cell.edges[sum(range(2, i + 2)) + src]
            family = mixed.families[FAMILIES.index(op.split("_")[0])]
            units = {"std_conv_3x3+dil_conv_3x3": [family.chain[0], family.dilated[0]],
                     "std_conv_3x3_x2+dil_conv_3x3": [*family.chain[:2], family.dilated[1]],
                     "std_conv_3x3_x3": list(family.chain),
                     "std_conv_3x3+dil_conv_3x3_r3": [family.chain[0], *family.dilated[2:]]}
            units |= {n.replace("std", "sinSep"): u for n, u in units.items()}
            squeeze, op_seq, expand = aug_cell.edges[k]
            for mine, theirs in ((squeeze, mixed.squeeze), (expand, mixed.expand)):
                mine.weight.data.copy_(theirs.weight)  # the supernet's edge 1x1s have no bias
                mine.bias.data.zero_()
            for mine, theirs in zip(op_seq, units[op]):
                mine.load_state_dict(theirs.state_dict())
            k += 1


@pytest.mark.parametrize("dil3", [False, True])
def test_augment_cell_equals_supernet_cell_with_one_hot_alphas(dil3):
    """Search and augment agree on the genotype's meaning (sources, nodes, concat)."""
    torch.manual_seed(0)
    last = "sinSep_conv_3x3+dil_conv_3x3_r3" if dil3 else "sinSep_conv_3x3_x3"
    genotype = Genotype([[(last, 0), ("std_conv_3x3+dil_conv_3x3", 1)],
                         [("std_conv_3x3_x2+dil_conv_3x3", 2), ("sinSep_conv_3x3+dil_conv_3x3", 0)],
                         [("std_conv_3x3_x3", 3), ("sinSep_conv_3x3_x2+dil_conv_3x3", 2)]],
                        range(2, 5))
    search_cell = SearchCell(3, (32, 32), 32, 32, dil3=dil3)
    aug_cell = AugmentCell(genotype, (32, 32), 32, 32)
    _tie(aug_cell, search_cell, genotype)
    ops = PRIMITIVES_DIL3 if dil3 else PRIMITIVES
    weights = [torch.zeros(i + 2, len(ops)) for i in range(3)]
    for w in weights:
        w[:, ops.index("none")] = 1.0
    for i, node in enumerate(genotype.normal):
        for op, src in node:
            weights[i][src] = 0.0
            weights[i][src, ops.index(op)] = 1.0
    s0, s1 = torch.randn(2, 32, 8, 8), torch.randn(2, 32, 8, 8)
    torch.testing.assert_close(aug_cell(s0, s1), search_cell(s0, s1, weights), rtol=1e-4, atol=1e-5)


def test_genotype_that_does_not_fit_the_config(tmp_path):
    text = read_genotype_text(PAPER)
    with pytest.raises(GenotypeError, match=f"{PAPER}:1: .* MODEL.FAD.NUM_NODES is 4"):
        build_detector(_cfg(**{"MODEL.FAD.NUM_NODES": 4, "MODEL.FAD.GENOTYPE": PAPER}), 3)
    with pytest.raises(GenotypeError, match="missing.log: genotype file not found"):
        resolve_genotype(_cfg(), str(tmp_path / "missing.log"))
    bad = "Genotype(normal=[], normal_concat=range(2, 2))\nGenotype(oops)"
    with pytest.raises(GenotypeError, match="MODEL.FAD.GENOTYPE:1: the genotype has no nodes"):
        resolve_genotype(_cfg(**{"MODEL.FAD.GENOTYPE": bad}))
    with pytest.raises(ConfigError, match="a genotype needs MODEL.META_ARCHITECTURE FCOS"):
        resolve_genotype(_cfg(**{"MODEL.META_ARCHITECTURE": "DeformableDETR"}), PAPER)
    with pytest.raises(ConfigError, match=r"^MODEL.FAD.EDGE_CHANNELS: 0 is out of range; must be "
                                          r"> 0"):
        load_config(None, ["MODEL.FAD.EDGE_CHANNELS", "0", "MODEL.FAD.GENOTYPE", text])


@pytest.mark.slow
def test_tiny_training_loss_falls(synthetic_root):
    from fad.data import build_dataset

    torch.manual_seed(0)
    cfg = _cfg(**{"MODEL.BACKBONE.DEPTH": 18, "MODEL.BACKBONE.NORM": "BN",
                  "MODEL.BACKBONE.FREEZE_AT": 0, "DATASETS.ROOT": synthetic_root,
                  "INPUT.MIN_SIZE_TRAIN": (128,), "INPUT.MAX_SIZE_TRAIN": 160,
                  "INPUT.FLIP_PROB_TRAIN": 0.0})
    dataset = build_dataset(cfg, ("synthetic_coco_train",), is_train=True)
    images, targets = zip(*[dataset[i] for i in range(2)])
    cfg.MODEL.FAD.GENOTYPE = read_genotype_text(PAPER)
    model = build_detector(cfg, dataset.num_classes).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    # flat for ~10 iterations: cls_reduce starts at N(0, 0.01) (reference)
    losses = train_steps(model, list(images), list(targets), opt, steps=16, max_norm=10.0)
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
