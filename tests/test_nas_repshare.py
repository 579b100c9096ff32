"""Primitives and RepShare: names, unit structure, sharing equals separate computation."""
import pytest
import torch
from torch import nn

from fad.nas.primitives import (
    PRIMITIVES,
    PRIMITIVES_DIL3,
    conv_unit,
    discrete_op,
    op_spec,
    primitives_for,
)
from fad.nas.repshare import RepShare, SeparateCandidates


def test_primitive_list_order():
    assert len(PRIMITIVES) == 11 and PRIMITIVES[-1] == "none"
    assert PRIMITIVES[:5] == ("std_conv_3x3", "std_conv_3x3+dil_conv_3x3", "std_conv_3x3_x2",
                              "std_conv_3x3_x2+dil_conv_3x3", "std_conv_3x3_x3")
    assert PRIMITIVES[5:10] == tuple(p.replace("std", "sinSep") for p in PRIMITIVES[:5])
    assert len(PRIMITIVES_DIL3) == 13 and PRIMITIVES_DIL3[-1] == "none"
    # the reference's dil3 order: the dilation-3 branch on x1, emitted second
    assert PRIMITIVES_DIL3[:6] == (PRIMITIVES[:1] + ("std_conv_3x3+dil_conv_3x3_r3",)
                                   + PRIMITIVES[1:5])
    assert PRIMITIVES_DIL3[6:12] == tuple(p.replace("std", "sinSep") for p in PRIMITIVES_DIL3[:6])
    assert primitives_for(11) == PRIMITIVES and primitives_for(13) == PRIMITIVES_DIL3
    with pytest.raises(ValueError, match="12 columns"):
        primitives_for(12)


@pytest.mark.parametrize("name,depth,dilation", [
    ("std_conv_3x3", 1, 0), ("sinSep_conv_3x3+dil_conv_3x3", 1, 2),
    ("std_conv_3x3_x2", 2, 0), ("sinSep_conv_3x3_x2+dil_conv_3x3", 2, 2),
    ("sinSep_conv_3x3_x3", 3, 0), ("std_conv_3x3+dil_conv_3x3_r3", 1, 3),
    ("sinSep_conv_3x3+dil_conv_3x3_r3", 1, 3)])
def test_discrete_op_structure(name, depth, dilation):
    spec = op_spec(name)
    assert (spec.depth, spec.dilation) == (depth, dilation)
    op = discrete_op(name, 32)
    convs = [m for m in op.modules() if isinstance(m, nn.Conv2d)]
    per_unit = 1 if spec.family == "std" else 2
    dilated = dilation > 0
    assert len(convs) == depth * per_unit + 2 * dilated
    assert sum(isinstance(m, nn.GroupNorm) for m in op.modules()) == depth + dilated
    assert [m.dilation for m in convs if m.dilation != (1, 1)] == [(dilation,) * 2] * dilated
    assert [m.padding for m in convs if m.dilation != (1, 1)] == [(dilation,) * 2] * dilated
    assert op(torch.randn(1, 32, 9, 11)).shape == (1, 32, 9, 11)


def test_none_and_unknown_are_not_ops():
    for bad in ("none", "max_pool_3x3"):
        with pytest.raises(ValueError, match="not a searchable operation"):
            discrete_op(bad, 32)


def test_sinsep_unit_is_depthwise_then_pointwise():
    dw, pw, gn, _ = conv_unit("sinSep", 64)
    assert dw.groups == 64 and dw.bias is None and pw.kernel_size == (1, 1) and pw.bias is not None
    assert gn.num_groups == 32


@pytest.mark.parametrize("family,dil3", [("std", False), ("sinSep", False), ("std", True),
                                         ("sinSep", True)])
def test_repshare_equals_separate_candidates(family, dil3):
    torch.manual_seed(0)
    shared, separate = RepShare(family, 32, dil3), SeparateCandidates(family, 32, dil3)
    x = torch.randn(2, 32, 12, 10)
    untied = separate(x)
    separate.tie_to(shared)
    outs_shared, outs_separate = shared(x), separate(x)
    assert len(outs_shared) == len(outs_separate) == (6 if dil3 else 5)
    for a, b, c in zip(outs_shared, outs_separate, untied):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(a, c)
    # gradients of the shared input agree too
    xs, xp = x.clone().requires_grad_(), x.clone().requires_grad_()
    sum(o.square().sum() for o in shared(xs)).backward()
    sum(o.square().sum() for o in separate(xp)).backward()
    torch.testing.assert_close(xs.grad, xp.grad, rtol=1e-4, atol=1e-5)


def test_undecoupled_candidates_match_discrete_ops():
    """Candidates without a decouple 1x1 equal the augment op with the same weights."""
    torch.manual_seed(1)
    shared = RepShare("std", 32)
    x = torch.randn(1, 32, 8, 8)
    outs = shared(x)
    op = discrete_op("std_conv_3x3_x2+dil_conv_3x3", 32)
    for mine, theirs in zip(op, [shared.chain[0], shared.chain[1], shared.dilated[1]]):
        mine.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(op(x), outs[3])
    op3 = discrete_op("std_conv_3x3_x3", 32)
    for mine, theirs in zip(op3, shared.chain):
        mine.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(op3(x), outs[4])
    shared3 = RepShare("sinSep", 32, dil3=True)
    op_d3 = discrete_op("sinSep_conv_3x3+dil_conv_3x3_r3", 32)
    for mine, theirs in zip(op_d3, [shared3.chain[0], shared3.dilated[2]]):
        mine.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(op_d3(x), shared3(x)[1])


def test_repshare_shares_units():
    def convs(m):
        return sum(isinstance(c, nn.Conv2d) and c.kernel_size == (3, 3) for c in m.modules())
    assert convs(RepShare("std", 32)) == 3 + 2
    assert convs(SeparateCandidates("std", 32)) == 9 + 2


@pytest.mark.parametrize("edges", [1, 3])
def test_weighted_sum_of_both_tail_kinds_equals_the_plain_sum(edges):
    """E edges' 1x1-tailed terms (one grouped 1x1 over their inputs) and GroupNorm-tailed terms
    (one gn_relu_sum), interleaved, side by side over channels, against each edge's
    sum_k w_ek * out_ek: outputs and gradients."""
    from fad.nas.pointwise import Pointwise
    from fad.nas.repshare import _outputs, fold, weighted_sum

    torch.manual_seed(0)
    c = 8

    def tail(k: int) -> nn.Module:
        return Pointwise(c, c, bias=False) if k % 2 == 0 else nn.GroupNorm(4, c)
    tails = [tuple(tail(k) for _ in range(edges)) for k in range(5)]
    for gn in (m for t in tails[1::2] for m in t):
        torch.nn.init.normal_(gn.weight)
        torch.nn.init.normal_(gn.bias)
    modules = [m.double() for t in tails for m in t]
    terms = [(torch.randn(2, edges * c, 5, 6, dtype=torch.float64), t) for t in tails]
    alphas = torch.randn(edges, len(terms), dtype=torch.float64, requires_grad=True)
    weights = alphas.softmax(1)
    expected = torch.cat([
        sum(w * out for w, out in zip(weights[e], _outputs(
            [(t[:, e * c:(e + 1) * c], (ts[e],)) for t, ts in terms])))
        for e in range(edges)], 1)
    got = weighted_sum(terms, fold([t for _, t in terms], weights))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(got)
    params = [alphas, *(p for m in modules for p in m.parameters())]
    for a, b in zip(torch.autograd.grad(got, params, g, retain_graph=True),
                    torch.autograd.grad(expected, params, g)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
