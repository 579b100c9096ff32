"""The depthwise 3x3 kernel's NHWC path (channels-last input) against F.conv2d: outputs and both
gradients (float32 and float64), gradcheck, layouts, thread counts, the baseline ISA path."""

import pytest
import torch
import torch.nn.functional as F
from conftest import run_at_baseline_isa

from fad.ops.depthwise import depthwise_conv3x3, kernel_runs

CL = torch.channels_last


@pytest.fixture(autouse=True)
def _need_kernel(monkeypatch):
    monkeypatch.setenv("FAD_DEPTHWISE_BACKEND", "cpp")  # a build failure fails the tests
    assert kernel_runs(torch.zeros(1, 1, 1, 1))


def _nhwc(shape, dtype=torch.float32, seed=0) -> torch.Tensor:
    """A random channels-last Tensor[shape] that needs a gradient."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype).to(memory_format=CL).requires_grad_()


def _against_conv2d(x: torch.Tensor, dilation: int, rtol: float, atol: float) -> None:
    """Output, input and weight gradients of the kernel on channels-last x equal F.conv2d's on
    an NCHW copy; the output and the input gradient are channels-last."""
    c = x.shape[1]
    g = torch.Generator().manual_seed(7)
    w = torch.randn(c, 1, 3, 3, generator=g, dtype=x.dtype).requires_grad_()
    out = depthwise_conv3x3(x, w, dilation)
    assert "DepthwiseConv" in out.grad_fn.name()
    assert out.is_contiguous(memory_format=CL)
    xr = x.detach().contiguous().requires_grad_()
    ref = F.conv2d(xr, w, padding=dilation, dilation=dilation, groups=c)
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol)
    grad = torch.randn(ref.shape, generator=g, dtype=x.dtype)
    gx, gw = torch.autograd.grad(out, (x, w), grad)
    rx, rw = torch.autograd.grad(ref, (xr, w), grad)
    assert gx.is_contiguous(memory_format=CL)
    torch.testing.assert_close(gx, rx, rtol=rtol, atol=atol)
    torch.testing.assert_close(gw, rw, rtol=rtol, atol=atol)


# interior columns and a vector remainder over C (24, 40: not multiples of 16), odd sizes, rows
# whose every column is an end column (width 3 with dilation 2), 2x2 maps, N = 1; the demo's P3
@pytest.mark.parametrize("shape", [(2, 24, 9, 13), (1, 40, 5, 7), (3, 5, 2, 2), (1, 16, 7, 3),
                                   (2, 32, 28, 20)])
@pytest.mark.parametrize("dilation", [1, 2])
def test_matches_conv2d_float32(shape, dilation, threads):
    _against_conv2d(_nhwc(shape), dilation, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(2, 24, 9, 13), (1, 40, 4, 3), (2, 3, 2, 2)])
@pytest.mark.parametrize("dilation", [1, 2, 3])
def test_matches_conv2d_float64(shape, dilation, threads):
    _against_conv2d(_nhwc(shape, torch.float64), dilation, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dilation,shape", [(1, (2, 5, 6, 5)), (2, (1, 3, 5, 4)),
                                            (2, (2, 4, 2, 2))])
def test_gradcheck_float64(dilation, shape):
    x = _nhwc(shape, torch.float64, seed=1)
    w = torch.randn(shape[1], 1, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: depthwise_conv3x3(a, b, dilation), (x, w))


def test_gradgradcheck_float64():
    x = _nhwc((1, 3, 5, 4), torch.float64, seed=3)
    w = torch.randn(3, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda a, b: depthwise_conv3x3(a, b, 2), (x, w))


def test_one_by_one_maps_take_the_nchw_kernel_with_conv2d_values():
    """1x1 maps are NCHW and channels-last at once: the NCHW kernel, same values."""
    x = _nhwc((1, 24, 1, 1))
    assert x.is_contiguous()
    _against_conv2d(x, 1, rtol=1e-5, atol=1e-5)


def test_nchw_gradient_into_a_channels_last_output():
    """A downstream op that hands back an NCHW gradient: converted, same values."""
    x = _nhwc((2, 8, 6, 5))
    w = torch.randn(8, 1, 3, 3, requires_grad=True)
    out = depthwise_conv3x3(x, w, 2)
    grad = torch.randn(out.shape)  # NCHW-contiguous
    xr = x.detach().contiguous().requires_grad_()
    ref = F.conv2d(xr, w, padding=2, dilation=2, groups=8)
    got, want = torch.autograd.grad(out, (x, w), grad), torch.autograd.grad(ref, (xr, w), grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_weight_gradient_does_not_depend_on_the_thread_count():
    """Fixed chunks of rows, added in order: bit-equal weight gradients at 1 and 2 threads."""
    x = _nhwc((8, 32, 28, 20))
    w = torch.randn(32, 1, 3, 3, requires_grad=True)
    grads = []
    previous = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out = depthwise_conv3x3(x, w, 1)
            grads.append(torch.autograd.grad(out, (x, w), out))
    finally:
        torch.set_num_threads(previous)
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_baseline_isa_path_matches_conv2d():
    """ATEN_CPU_CAPABILITY=default runs the non-AVX2 copy of the NHWC loops."""
    run_at_baseline_isa(
        "import torch, torch.nn.functional as F\n"
        "from fad.ops.depthwise import depthwise_conv3x3\n"
        "for shape, d in (((2, 24, 9, 13), 1), ((1, 40, 4, 3), 2)):\n"
        "    x = torch.randn(shape).to(memory_format=torch.channels_last).requires_grad_()\n"
        "    w = torch.randn(shape[1], 1, 3, 3, requires_grad=True)\n"
        "    out = depthwise_conv3x3(x, w, d)\n"
        "    assert 'DepthwiseConv' in out.grad_fn.name()\n"
        "    ref = F.conv2d(x, w, padding=d, dilation=d, groups=shape[1])\n"
        "    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)\n"
        "    for a, b in zip(torch.autograd.grad(out, (x, w), out.detach()),\n"
        "                    torch.autograd.grad(ref, (x, w), out.detach())):\n"
        "        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)",
        {"FAD_DEPTHWISE_BACKEND": "cpp", "OMP_NUM_THREADS": "1"}, timeout=900)
