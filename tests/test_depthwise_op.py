"""The compiled depthwise 3x3 convolution against F.conv2d: outputs, gradients, gradcheck."""
import pytest
import torch
import torch.nn.functional as F

from fad.ops import depthwise
from fad.ops.depthwise import DepthwiseConv3x3, depthwise_conv3x3, kernel_runs


@pytest.fixture(autouse=True)
def _need_kernel(monkeypatch):
    monkeypatch.setenv("FAD_DEPTHWISE_BACKEND", "cpp")  # a build failure fails the tests
    assert kernel_runs(torch.zeros(1, 1, 1, 1))


# rows with interior columns (13, 37: vector loop and its remainder), rows whose every column
# is an end column (1, 4, 7 with dilation 3; width 4 < 2 * 3), maps smaller than the dilation
@pytest.mark.parametrize("shape", [(2, 5, 9, 13), (1, 3, 1, 1), (3, 2, 2, 7), (1, 4, 17, 4),
                                   (1, 2, 4, 37)])
@pytest.mark.parametrize("dilation", [1, 2, 3])
def test_matches_conv2d_forward_and_backward(shape, dilation):
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=True)
    w = torch.randn(shape[1], 1, 3, 3, requires_grad=True)
    ref = F.conv2d(x, w, padding=dilation, dilation=dilation, groups=shape[1])
    out = depthwise_conv3x3(x, w, dilation)
    assert out.grad_fn is not None and "DepthwiseConv" in out.grad_fn.name()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, (x, w), g), torch.autograd.grad(ref, (x, w), g)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dilation,width", [(1, 5), (2, 5), (3, 11)])
def test_gradcheck_float64(dilation, width):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 6, width, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: depthwise_conv3x3(a, b, dilation), (x, w))


def test_double_backward_float64():
    torch.manual_seed(3)
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda a, b: depthwise_conv3x3(a, b, 2), (x, w))
    frozen = torch.randn(1, 2, 5, 4, dtype=torch.float64)  # an input that needs no gradient
    (gw,) = torch.autograd.grad(depthwise_conv3x3(frozen, w).square().sum(), w, create_graph=True)
    (gw_ref,) = torch.autograd.grad(F.conv2d(frozen, w, padding=1, groups=2).square().sum(), w,
                                    create_graph=True)
    torch.testing.assert_close(gw, gw_ref)
    torch.testing.assert_close(torch.autograd.grad(gw.sum(), w)[0],
                               torch.autograd.grad(gw_ref.sum(), w)[0])


def test_module_is_a_conv2d_with_the_same_state_dict():
    torch.manual_seed(2)
    mine = DepthwiseConv3x3(8, dilation=2)
    plain = torch.nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8, bias=False)
    plain.load_state_dict(mine.state_dict())
    x = torch.randn(2, 8, 10, 12)
    torch.testing.assert_close(mine(x), plain(x), rtol=1e-5, atol=1e-5)
    assert list(mine.state_dict()) == ["weight"]


def test_non_contiguous_input_and_reference_backend(monkeypatch):
    x = torch.randn(2, 6, 7, 8).transpose(2, 3)  # [2, 6, 8, 7], not contiguous
    w = torch.randn(6, 1, 3, 3)
    ref = F.conv2d(x, w, padding=1, groups=6)
    torch.testing.assert_close(depthwise_conv3x3(x, w), ref, rtol=1e-5, atol=1e-5)
    monkeypatch.setenv("FAD_DEPTHWISE_BACKEND", "reference")
    assert not depthwise.kernel_runs(x)
    assert depthwise_conv3x3(x.requires_grad_(), w).grad_fn.name().startswith("Convolution")


def test_flop_counter_counts_the_kernel_like_a_convolution(monkeypatch):
    from torch.utils.flop_counter import FlopCounterMode

    unit = DepthwiseConv3x3(6, dilation=2)
    x = torch.randn(2, 6, 9, 10, requires_grad=True)
    forward = []
    for backend in ("cpp", "reference"):
        monkeypatch.setenv("FAD_DEPTHWISE_BACKEND", backend)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            unit(x)
        forward.append(counter.get_total_flops())
    assert forward[0] == forward[1] == 2 * 9 * x.numel()
    monkeypatch.setenv("FAD_DEPTHWISE_BACKEND", "cpp")
    with FlopCounterMode(display=False) as counter:
        unit(x).sum().backward()
    # forward + input gradient + weight gradient; torch's own formula counts the input
    # gradient of a grouped convolution C times over, so the two paths differ there
    assert counter.get_total_flops() == 3 * 2 * 9 * x.numel()


def test_bad_backend_name(monkeypatch):
    monkeypatch.setenv("FAD_DEPTHWISE_BACKEND", "fastest")
    with pytest.raises(ValueError, match="FAD_DEPTHWISE_BACKEND"):
        kernel_runs(torch.zeros(1))


@pytest.mark.parametrize("dilation", [1, 2])
def test_channels_last_input_takes_the_kernel_with_the_nchw_values(dilation):
    """NHWC x (channels-last training) runs the kernel's NHWC path: the output stays
    channels-last and output and gradients equal the kernel's on the NCHW copy
    (tests/test_depthwise_nhwc.py checks that path against F.conv2d)."""
    torch.manual_seed(4)
    x = torch.randn(2, 8, 9, 11)
    w = torch.randn(8, 1, 3, 3, requires_grad=True)
    nhwc = x.to(memory_format=torch.channels_last).requires_grad_()
    nchw = x.clone().requires_grad_()
    assert kernel_runs(nchw) and kernel_runs(nhwc)
    out, ref = depthwise_conv3x3(nhwc, w, dilation), depthwise_conv3x3(nchw, w, dilation)
    assert "DepthwiseConv" in ref.grad_fn.name() and "DepthwiseConv" in out.grad_fn.name()
    assert out.is_contiguous(memory_format=torch.channels_last) and ref.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, (nhwc, w), g), torch.autograd.grad(ref, (nchw, w), g)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
