"""The compiled GroupNorm + ReLU op for channels-last maps against F.group_norm + F.relu:
outputs and gradients at odd sizes and thread counts, gradcheck, ReLU's gradient at exactly 0,
the reference on NCHW input, fake tensors."""
import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from fad.ops.backends import using
from fad.ops.gn_relu import group_norm_relu, group_norm_relu_reference, kernel_runs


@pytest.fixture(autouse=True)
def _need_kernel(monkeypatch):
    monkeypatch.setenv("FAD_GN_RELU_BACKEND", "cpp")  # a build failure fails the tests
    assert kernel_runs(torch.zeros(1, 1, 1, 1).to(memory_format=torch.channels_last))


def _inputs(n: int, c: int, h: int, w: int, dtype=torch.float32, seed: int = 0):
    """Channels-last x [N, C, H, W] (off-centre, so the ReLU cuts unevenly), weight, bias [C]."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, c, h, w, generator=g, dtype=dtype) * 2 + 0.3)
    x = x.to(memory_format=torch.channels_last).requires_grad_()
    weight = torch.randn(c, generator=g, dtype=dtype).requires_grad_()
    bias = torch.randn(c, generator=g, dtype=dtype).requires_grad_()
    return x, weight, bias


def _reference(x, groups, weight, bias):
    return F.relu(F.group_norm(x, groups, weight, bias, 1e-5))


# (N, C, H, W, G): the demo's head maps, 2 channels in 1 group, 1x1 maps, one sample, odd sizes
@pytest.mark.parametrize("shape", [(8, 32, 28, 20, 16), (2, 64, 7, 5, 32), (3, 2, 5, 3, 1),
                                   (4, 32, 1, 1, 16), (1, 6, 9, 7, 3), (2, 96, 3, 2, 32)])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_group_norm_relu_forward_and_backward(shape, threads, dtype):
    """Against the float64 reference: float64 to 1e-9; float32 to 1e-4 of each tensor's largest
    magnitude, or twice PyTorch's own float32 error where that is larger (on 1x1 maps a group is
    2 values whose variance can be tiny: rstd ~50, and dx of such a group cancels)."""
    *size, groups = shape
    x, weight, bias = _inputs(*size, dtype=dtype)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = group_norm_relu(x, groups, weight, bias)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=dtype)
        got = [out, *torch.autograd.grad(out, (x, weight, bias), g)]
    finally:
        torch.set_num_threads(previous)
    assert out.grad_fn is not None and "GroupNormRelu" in out.grad_fn.name()
    assert out.is_contiguous(memory_format=torch.channels_last)
    inputs = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    ref = _reference(inputs[0], groups, *inputs[1:])
    want = [ref, *torch.autograd.grad(ref, inputs, g.double())]
    pytorch = _reference(x, groups, weight, bias)
    pytorch = [pytorch.detach(), *torch.autograd.grad(pytorch, (x, weight, bias), g)]
    want = [t.detach() for t in want]
    for a, b, p, name in zip(got, want, pytorch, ("y", "x", "weight", "bias")):
        scale = max(1.0, float(b.abs().max()))
        if dtype == torch.float64:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * scale, msg=name)
        else:
            atol = max(1e-4 * scale, 2 * float((p.double() - b).abs().max()))
            torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=atol, msg=name)


def test_gradcheck_float64():
    x, weight, bias = _inputs(2, 6, 4, 3, torch.float64, seed=1)
    assert torch.autograd.gradcheck(lambda a, w, b: group_norm_relu(a, 3, w, b), (x, weight, bias))


def test_double_backward_differentiates_the_reference_float64():
    x, weight, bias = _inputs(1, 4, 3, 3, torch.float64, seed=2)
    assert torch.autograd.gradgradcheck(lambda a, w, b: group_norm_relu(a, 2, w, b),
                                        (x, weight, bias))


def test_relu_gradient_at_zero_is_zero_as_in_pytorch():
    """Groups of values symmetric about 0 (mean exactly 0) and bias 0: y is exactly 0 where x
    is 0, and there the gradient must not pass (y > 0 masks, as PyTorch's threshold_backward)."""
    half = torch.randint(-2, 3, (2, 4, 3, 2), generator=torch.Generator().manual_seed(3))
    x = torch.cat([half, -half], dim=3).to(torch.float64)
    x = x.to(memory_format=torch.channels_last).requires_grad_()
    weight = torch.tensor([1.5, -0.5, 2.0, 0.7], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    out = group_norm_relu(x, 2, weight, bias)
    assert (out[x == 0] == 0).all() and int((x == 0).sum()) > 0
    g = torch.rand_like(out) + 0.5  # > 0 everywhere: a mask that passes at 0 changes grad_bias
    ref = _reference(x, 2, weight, bias)
    for a, b, name in zip(torch.autograd.grad(out, (x, weight, bias), g),
                          torch.autograd.grad(ref, (x, weight, bias), g),
                          ("x", "weight", "bias")):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)


def test_nchw_input_takes_the_reference():
    x, weight, bias = _inputs(2, 8, 5, 4)
    nchw = x.detach().contiguous().requires_grad_()
    assert not kernel_runs(nchw, weight, bias)
    out = group_norm_relu(nchw, 4, weight, bias)
    assert out.is_contiguous() and "GroupNormRelu" not in out.grad_fn.name()
    torch.testing.assert_close(out, _reference(nchw, 4, weight, bias), rtol=0, atol=0)


def test_reference_backend_and_other_dtypes_take_the_reference():
    x, weight, bias = _inputs(2, 8, 5, 4)
    with using("gn_relu", "reference"):
        assert not kernel_runs(x, weight, bias)
    assert not kernel_runs(x.bfloat16(), weight.bfloat16(), bias.bfloat16())
    assert not kernel_runs(x, weight.double(), bias.double())
    out = group_norm_relu(x, 4, None, None)  # no affine: the reference
    torch.testing.assert_close(out, group_norm_relu_reference(x, 4, None, None, 1e-5))


def test_kernel_ops_have_fake_impls():
    with FakeTensorMode():
        x = torch.empty(2, 8, 5, 4).to(memory_format=torch.channels_last)
        w = torch.empty(8)
        y, mean, rstd = torch.ops.fad_gn_relu.forward(x, w, w, 4, 1e-5)
        dx, dw, db = torch.ops.fad_gn_relu.backward(y, y, x, w, mean, rstd, 4)
    assert y.shape == dx.shape == (2, 8, 5, 4) and y.is_contiguous(
        memory_format=torch.channels_last)
    assert mean.shape == rstd.shape == (2, 4) and dw.shape == db.shape == (8,)
