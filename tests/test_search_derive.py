"""Genotype derivation on hand-set alphas, the collapse check and the supernet's parameter split."""
import pytest
import torch

from fad.config import get_cfg_defaults
from fad.engine.solver import build_optimizer
from fad.nas.genotype import validate_genotype
from fad.nas.primitives import PRIMITIVES, PRIMITIVES_DIL3
from fad.search.derive import derive_genotype, none_dominated_edges, softmax_alpha_scalars
from fad.search.engine import mean_over_ranks
from fad.search.supernet import Supernet, build_search_head

NONE = PRIMITIVES.index("none")


def _alphas():
    alphas = [torch.zeros(i + 2, 11) for i in range(3)]
    # node 0: edge 0 favours std_conv_3x3_x3 (weak), edge 1 strongly favours sinSep_conv_3x3
    alphas[0][0, PRIMITIVES.index("std_conv_3x3_x3")] = 1.0
    alphas[0][1, PRIMITIVES.index("sinSep_conv_3x3")] = 3.0
    # node 1: `none` dominates edge 2 but must never be picked; edge 0 is the weakest
    alphas[1][2, NONE] = 10.0
    alphas[1][2, PRIMITIVES.index("std_conv_3x3+dil_conv_3x3")] = 2.0
    alphas[1][1, PRIMITIVES.index("sinSep_conv_3x3_x2")] = 1.5
    alphas[1][0, PRIMITIVES.index("std_conv_3x3")] = 0.5
    # node 2: softmax ranking differs from raw-logit ranking: edge 3's top logit (2.0) is the
    # largest, but edge 1 has a higher softmax weight because its other logits are very low
    alphas[2][3, PRIMITIVES.index("std_conv_3x3_x2")] = 2.0
    alphas[2][1, :] = -5.0
    alphas[2][1, PRIMITIVES.index("sinSep_conv_3x3_x2+dil_conv_3x3")] = 1.0
    alphas[2][0, PRIMITIVES.index("std_conv_3x3")] = 0.2
    return alphas


def test_derive_on_hand_set_alphas():
    g = derive_genotype(_alphas())
    assert g.normal[0] == [("sinSep_conv_3x3", 1), ("std_conv_3x3_x3", 0)]
    # edge 2's softmax weight for std_conv_3x3+dil (excluding none) is tiny next to none's
    assert g.normal[1] == [("sinSep_conv_3x3_x2", 1), ("std_conv_3x3", 0)]
    assert g.normal[2] == [("sinSep_conv_3x3_x2+dil_conv_3x3", 1), ("std_conv_3x3_x2", 3)]
    assert g.normal_concat == range(2, 5)
    validate_genotype(g, num_nodes=3)


def test_never_picks_none_even_when_everything_collapses():
    alphas = [torch.zeros(i + 2, 11) for i in range(3)]
    for a in alphas:
        a[:, NONE] = 20.0
        a[:, 7] = 1.0
    g = derive_genotype(alphas)
    assert all(op == PRIMITIVES[7] for node in g.normal for op, _ in node)
    edges = none_dominated_edges(alphas)
    assert len(edges) == 9 and all(w > 0.99 for _, _, w in edges)
    (node, src, weight), = none_dominated_edges(_alphas())
    assert (node, src) == (1, 2)
    assert abs(weight - torch.e ** 10 / (torch.e ** 10 + torch.e ** 2 + 9)) < 1e-6


def test_derive_with_the_dilation3_candidates():
    alphas = [torch.zeros(i + 2, 13) for i in range(3)]
    for a in alphas:
        a[:, -1] = 9.0  # none, never picked
        a[0, PRIMITIVES_DIL3.index("sinSep_conv_3x3+dil_conv_3x3_r3")] = 2.0
        a[1, PRIMITIVES_DIL3.index("std_conv_3x3+dil_conv_3x3_r3")] = 1.0
    g = derive_genotype(alphas)
    assert all(node == [("sinSep_conv_3x3+dil_conv_3x3_r3", 0),
                        ("std_conv_3x3+dil_conv_3x3_r3", 1)] for node in g.normal)
    assert len(none_dominated_edges(alphas)) == 9
    assert len(softmax_alpha_scalars("cls", alphas)) == 9 * 13
    validate_genotype(g, num_nodes=3)


def test_softmax_scalars():
    scalars = softmax_alpha_scalars("box", _alphas())
    assert len(scalars) == 9 * 11
    per_edge = sum(v for k, v in scalars.items() if k.startswith("alpha_box/node1_src2/"))
    assert abs(per_edge - 1.0) < 1e-6


@pytest.mark.parametrize("dil3", [False, True])
def test_alphas_and_weights_are_disjoint(dil3):
    cfg = get_cfg_defaults()
    cfg.merge_from_list(["MODEL.FPN.OUT_CHANNELS", 32, "MODEL.FAD.TOWER_CHANNELS", 32,
                         "MODEL.FAD.EDGE_CHANNELS", 32, "MODEL.FAD.DIL3", dil3])
    class _Detector(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = torch.nn.Conv2d(3, 32, 1)
            self.head = build_search_head(cfg, 5)

    model = Supernet(_Detector())
    alphas = model.arch_parameters()
    k = 13 if dil3 else 11
    assert [tuple(a.shape) for a in alphas] == [(2, k), (3, k), (4, k)] * 2
    weights = model.weight_parameters()
    arch_ids, weight_ids = {id(a) for a in alphas}, {id(p) for p in weights}
    assert not arch_ids & weight_ids
    assert arch_ids | weight_ids == {id(p) for p in model.parameters()}
    opt = build_optimizer(cfg, model.weight_named_parameters())
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == weight_ids
    assert all(float(a.detach().std()) < 0.01 for a in alphas)
    assert all(k.startswith("detector.") for k in model.state_dict())
    assert sum("alphas" in k for k in model.state_dict()) == 6
    feats = [torch.randn(1, 32, 8, 8), torch.randn(1, 32, 4, 4)]
    out = model.detector.head(feats)
    sum(v.sum() for v in out.values()).backward()
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in alphas)


def test_mean_over_ranks_is_identity_on_one_process():
    t = [torch.ones(3), torch.arange(4.0)]
    mean_over_ranks(t)
    assert torch.equal(t[1], torch.arange(4.0))
