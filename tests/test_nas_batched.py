"""E modules of one structure run as one (`fad.nas.batched`) equal each module on its own input."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fad.modeling.fcos.per_forward import levels_scope
from fad.nas.batched import run, stacked
from fad.nas.pointwise import Pointwise, conv1x1
from fad.nas.primitives import conv_unit, dil_unit, preprocess
from fad.nas.repshare import RepShare, SeparateCandidates

C = 8


def _randomized(module: nn.Module) -> nn.Module:
    """float64, with GroupNorm affines away from (1, 0) so a wrong group or slice shows."""
    for m in module.modules():
        if isinstance(m, nn.GroupNorm):
            nn.init.normal_(m.weight)
            nn.init.normal_(m.bias)
    return module.double()


def _each(modules, x):
    """The definition: module e on channels [e * C, (e + 1) * C) of x, concatenated."""
    return torch.cat([m(t) for m, t in zip(modules, x.chunk(len(modules), 1))], 1)


def _assert_same_with_gradients(got, expected, leaves):
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(got)
    for a, b in zip(torch.autograd.grad(got, leaves, g, retain_graph=True, allow_unused=True),
                    torch.autograd.grad(expected, leaves, g, retain_graph=True,
                                        allow_unused=True)):
        assert (a is None) == (b is None)  # a term does not reach its tail's parameters
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


MAKERS = {
    "std unit": lambda: conv_unit("std", C),
    "sinSep unit": lambda: conv_unit("sinSep", C),
    "dilated unit d=2": lambda: dil_unit(C, 2),
    "dilated unit d=3": lambda: dil_unit(C, 3),
    "preprocess 1x1+GN+ReLU": lambda: preprocess(C, C + 4),
    "1x1 with bias": lambda: Pointwise(C, 5),
    "1x1 without bias": lambda: Pointwise(C, 5, bias=False),
}


@pytest.mark.parametrize("edges", [1, 3])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("kind", list(MAKERS))
def test_run_equals_each_module_on_its_input(kind, batch, edges):
    torch.manual_seed(0)
    modules = [_randomized(MAKERS[kind]()) for _ in range(edges)]
    x = torch.randn(batch, edges * C, 7, 6, dtype=torch.float64, requires_grad=True)
    leaves = [x, *(p for m in modules for p in m.parameters())]
    _assert_same_with_gradients(run(modules, x), _each(modules, x), leaves)


def test_run_stops_before_the_last_layers():
    torch.manual_seed(0)
    units = [_randomized(conv_unit("sinSep", C)) for _ in range(2)]
    x = torch.randn(1, 2 * C, 5, 5, dtype=torch.float64, requires_grad=True)
    expected = _each([u[:-2] for u in units], x)  # depthwise, 1x1; no GroupNorm, no ReLU
    leaves = [x, *(p for u in units for p in u[:2].parameters())]
    _assert_same_with_gradients(run(units, x, stop=-2), expected, leaves)


def test_run_refuses_a_layer_it_cannot_batch():
    with pytest.raises(TypeError, match="BatchNorm2d has no batched form"):
        run([nn.BatchNorm2d(C), nn.BatchNorm2d(C)], torch.randn(1, 2 * C, 3, 3))


@pytest.mark.parametrize("op", [RepShare, SeparateCandidates])
@pytest.mark.parametrize("family,dil3", [("std", False), ("sinSep", False), ("std", True)])
def test_terms_of_peers_equal_each_op_alone(op, family, dil3):
    torch.manual_seed(0)
    ops = [_randomized(op(family, C, dil3)) for _ in range(3)]
    x = torch.randn(1, 3 * C, 6, 5, dtype=torch.float64, requires_grad=True)
    together = ops[0].terms(x, ops[1:])
    alone = [o.terms(t) for o, t in zip(ops, x.chunk(3, 1))]
    assert len(together) == len(alone[0]) == (6 if dil3 else 5)
    leaves = [x, *(p for o in ops for p in o.parameters())]
    for k, (t, tails) in enumerate(together):
        assert tails == tuple(a[k][1][0] for a in alone)  # each op's own tail module
        _assert_same_with_gradients(t, torch.cat([a[k][0] for a in alone], 1), leaves)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("bias", [False, True])
def test_grouped_conv1x1_equals_the_grouped_convolution(batch, bias):
    torch.manual_seed(0)
    x = torch.randn(batch, 12, 4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 4, 1, 1, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True) if bias else None
    leaves = [x, w] + ([b] if bias else [])
    _assert_same_with_gradients(conv1x1(x, w, b, groups=3), F.conv2d(x, w, b, groups=3), leaves)


def test_stacked_parameters_are_made_once_per_forward():
    convs = [Pointwise(C, C) for _ in range(3)]
    assert stacked(convs[:1], "weight") is convs[0].weight
    assert stacked(convs, "weight") is not stacked(convs, "weight")  # no scope: made each call
    with levels_scope():
        first = stacked(convs, "weight", dim=1)
        assert first.shape == (C, 3 * C, 1, 1)
        assert stacked(convs, "weight", dim=1) is first
        assert stacked(convs, "weight").shape == (3 * C, C, 1, 1)  # another dim, another value
