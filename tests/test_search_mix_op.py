"""The compiled edge-mixing op `fad.ops.mix.gn_relu_sum` against its pure-PyTorch reference
(GroupNorm + ReLU + adds): outputs, gradients, float64 gradcheck, double backward, fallbacks."""
import pytest
import torch
import torch.nn.functional as F

from fad.ops import backends
from fad.ops.mix import gn_relu_sum, gn_relu_sum_reference, kernel_runs


@pytest.fixture(autouse=True)
def _need_kernel(monkeypatch):
    monkeypatch.setenv("FAD_MIX_BACKEND", "cpp")  # a build failure fails the tests
    assert kernel_runs(torch.zeros(1, 1, 1, 1))


def _inputs(k, shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [(torch.randn(shape, generator=g, dtype=dtype) * 2 + 1).requires_grad_()
          for _ in range(k)]
    scale = torch.rand(k, shape[1], generator=g, dtype=dtype).requires_grad_()
    shift = torch.randn(k, shape[1], generator=g, dtype=dtype).requires_grad_()
    return xs, scale, shift


def _by_hand(xs, scale, shift, groups, eps, base):
    """The definition, written out: per group (x - mean) / sqrt(var + eps), affine, ReLU, sum."""
    acc = base.clone()
    for x, a, b in zip(xs, scale, shift):
        n, c, h, w = x.shape
        v = x.reshape(n, groups, -1)
        xhat = ((v - v.mean(-1, keepdim=True))
                / (v.var(-1, unbiased=False, keepdim=True) + eps).sqrt()).reshape(n, c, h, w)
        acc = acc + (xhat * a.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)).clamp(min=0)
    return acc


# planes with a vector loop and a remainder (9 x 13), two-element planes, one channel per group,
# batch 3 (the backward's loop over samples), one candidate, maps large enough for several
# parallel tasks (with 2+ threads)
@pytest.mark.parametrize("k,shape,groups", [(6, (2, 12, 9, 13), 4), (3, (1, 8, 1, 2), 8),
                                            (4, (3, 6, 4, 5), 3), (1, (1, 4, 7, 3), 2),
                                            (2, (2, 8, 64, 64), 4)])
@pytest.mark.parametrize("with_base", [True, False])
def test_matches_reference_forward_and_backward(k, shape, groups, with_base):
    xs, scale, shift = _inputs(k, shape)
    rng = torch.Generator().manual_seed(1)  # base and output gradient: the same in every run
    base = torch.randn(shape, generator=rng).requires_grad_() if with_base else None
    out = gn_relu_sum(xs, scale, shift, groups, 1e-5, base)
    assert out.grad_fn is not None and "GnReluSum" in type(out.grad_fn).__name__
    ref = gn_relu_sum_reference(xs, scale, shift, groups, 1e-5, base)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    if with_base:
        torch.testing.assert_close(out, _by_hand(xs, scale, shift, groups, 1e-5, base),
                                   rtol=1e-5, atol=1e-5)
    inputs = [*xs, scale, shift, *([base] if with_base else [])]
    g = torch.randn(shape, generator=rng)
    for a, b in zip(torch.autograd.grad(out, inputs, g), torch.autograd.grad(ref, inputs, g)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_gradcheck_float64():
    xs, scale, shift = _inputs(3, (2, 6, 3, 5), torch.float64, seed=1)
    base = torch.randn(2, 6, 3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda s, b, c, *x: gn_relu_sum(list(x), s, b, 3, 1e-5, c), (scale, shift, base, *xs))


def test_double_backward_float64():
    xs, scale, shift = _inputs(2, (1, 4, 3, 3), torch.float64, seed=2)
    assert torch.autograd.gradgradcheck(
        lambda s, b, *x: gn_relu_sum(list(x), s, b, 2, 1e-5), (scale, shift, *xs))


def test_only_the_inputs_that_need_gradients():
    xs, scale, shift = _inputs(2, (1, 4, 3, 3), seed=3)
    frozen = [x.detach() for x in xs]
    base = torch.randn(1, 4, 3, 3)
    out = gn_relu_sum(frozen, scale, shift, 2, 1e-5, base)
    ref = gn_relu_sum_reference(frozen, scale, shift, 2, 1e-5, base)
    for a, b in zip(torch.autograd.grad(out.sum(), (scale, shift)),
                    torch.autograd.grad(ref.sum(), (scale, shift))):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_reference_backend_and_other_dtypes_take_the_reference(monkeypatch):
    xs, scale, shift = _inputs(2, (1, 4, 3, 3), seed=4)
    monkeypatch.setenv("FAD_MIX_BACKEND", "reference")
    out = gn_relu_sum(xs, scale, shift, 2, 1e-5)
    assert "GnReluSum" not in type(out.grad_fn).__name__
    monkeypatch.setenv("FAD_MIX_BACKEND", "cpp")
    half = gn_relu_sum([x.detach().bfloat16() for x in xs], scale.detach().bfloat16(),
                       shift.detach().bfloat16(), 2, 1e-5)
    assert half.dtype == torch.bfloat16
    expected = sum(F.relu(F.group_norm(x.detach(), 2, a.detach(), b.detach()))
                   for x, a, b in zip(xs, scale, shift))
    torch.testing.assert_close(half.float(), expected, rtol=0.05, atol=0.05)


def test_bad_backend_name(monkeypatch):
    monkeypatch.setenv("FAD_MIX_BACKEND", "cuda")
    with pytest.raises(backends.OpError, match="FAD_MIX_BACKEND"):
        kernel_runs(torch.zeros(1, 1, 1, 1))
