"""The search's 1x1 convolutions as GEMMs (`fad.nas.pointwise`) against `F.conv2d`."""
import pytest
import torch
import torch.nn.functional as F

from fad.nas.pointwise import Pointwise, conv1x1, gemm_runs


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_conv1x1_equals_conv2d_with_gradients(batch, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 6, 5, 7, generator=g, requires_grad=True)
    w = torch.randn(4, 6, 1, 1, generator=g, requires_grad=True)
    b = torch.randn(4, generator=g, requires_grad=True) if bias else None
    grad = torch.randn(batch, 4, 5, 7, generator=g)
    leaves = [t for t in (x, w, b) if t is not None]
    assert gemm_runs(x)
    got = conv1x1(x, w, b)
    want = F.conv2d(x, w, b)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    expected = torch.autograd.grad(want, leaves, grad)
    for a, e in zip(torch.autograd.grad(got, leaves, grad), expected):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 2])
def test_channel_slice_input_reads_the_view(batch):
    x = torch.randn(batch, 12, 4, 5, dtype=torch.float64)
    part = x[:, 4:10]  # a channel slice: planes contiguous, batch stride of the whole tensor
    w = torch.randn(3, 6, 1, 1, dtype=torch.float64)
    assert gemm_runs(part)
    torch.testing.assert_close(conv1x1(part, w), F.conv2d(part, w))


def test_gradcheck_float64():
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, 1, 1, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(conv1x1, (x, w, b))
    assert torch.autograd.gradgradcheck(conv1x1, (x, w, b))


def test_channels_last_keeps_conv2d_and_layer_keeps_the_state_dict():
    layer = Pointwise(6, 4)
    plain = torch.nn.Conv2d(6, 4, 1)
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(2, 6, 5, 7).to(memory_format=torch.channels_last)
    assert not gemm_runs(x)
    out = layer(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, plain(x))
    nchw = x.contiguous()
    torch.testing.assert_close(layer(nchw), plain(nchw), rtol=1e-5, atol=1e-5)
