"""`fad.ops.gn_relu.group_norm_relu_segments`: GroupNorm + ReLU of each segment of a map's
positions on its own, 0 outside them. The compiled kernel against the reference (float64 and
float32, forward and backward), gradcheck, each segment against the plain op on its slice, one
segment of all positions against the plain op, the run checks, the fake impls, and the
`GroupNormReLU` layer inside and outside a `segments_scope`."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from fad.ops.gn_relu import (
    GroupNormReLU,
    group_norm_relu,
    group_norm_relu_segments,
    segments_scope,
)
from fad.ops.gn_relu.segments import group_norm_relu_segments_reference, segment_positions

# A 5 x 7 map: segment 0 = rows 0-2, columns 0-3; segment 1 = rows 0-4, columns 5-6; the rest
# (column 4, rows 3-4 of columns 0-3) belongs to no segment.
H, W = 5, 7
BOXES = ((0, 0, 3, 4), (0, 5, 5, 2))


def _runs(boxes=BOXES, h=H, w=W) -> torch.Tensor:
    owner = torch.full((h, w), -1, dtype=torch.long)
    for s, (y, x, bh, bw) in enumerate(boxes):
        owner[y:y + bh, x:x + bw] = s
    runs = []
    for p, s in enumerate(owner.flatten().tolist()):
        if runs and runs[-1][2] == s:
            runs[-1][1] += 1
        else:
            runs.append([p, 1, s])
    return torch.tensor(runs)


def _inputs(dtype, n=3, c=8):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, H, W, generator=g, dtype=dtype).to(memory_format=torch.channels_last)
    weight = torch.randn(c, generator=g, dtype=dtype)
    bias = torch.randn(c, generator=g, dtype=dtype)
    return x.requires_grad_(), weight.requires_grad_(), bias.requires_grad_()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_the_kernel_equals_the_reference_forward_and_backward(dtype, tol):
    x, weight, bias = _inputs(dtype)
    runs = _runs()
    got = group_norm_relu_segments(x, 2, weight, bias, 1e-5, runs, 2)
    want = group_norm_relu_segments_reference(x, 2, weight, bias, 1e-5, runs, 2)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    grad = torch.randn_like(got)
    for a, b in zip(torch.autograd.grad(got, (x, weight, bias), grad),
                    torch.autograd.grad(want, (x, weight, bias), grad)):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_gradcheck():
    x, weight, bias = _inputs(torch.float64, n=2, c=4)
    runs = _runs()
    assert torch.autograd.gradcheck(
        lambda *t: group_norm_relu_segments(*t[:1], 2, *t[1:], 1e-5, runs, 2), (x, weight, bias))


def test_each_segment_is_the_plain_op_on_its_slice_and_the_rest_is_zero():
    x, weight, bias = _inputs(torch.float64)
    got = group_norm_relu_segments(x, 4, weight, bias, 1e-5, _runs(), 2)
    outside = torch.ones(H, W, dtype=torch.bool)
    for y, x0, h, w in BOXES:
        part = x[:, :, y:y + h, x0:x0 + w].contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(got[:, :, y:y + h, x0:x0 + w],
                                   group_norm_relu(part, 4, weight, bias), rtol=1e-12,
                                   atol=1e-12)
        outside[y:y + h, x0:x0 + w] = False
    assert torch.equal(got[:, :, outside], torch.zeros_like(got[:, :, outside]))


def test_one_segment_of_every_position_is_the_plain_op():
    x, weight, bias = _inputs(torch.float64)
    one = torch.tensor([[0, H * W, 0]])
    torch.testing.assert_close(group_norm_relu_segments(x, 2, weight, bias, 1e-5, one, 1),
                               group_norm_relu(x, 2, weight, bias), rtol=1e-14, atol=1e-14)


def test_segment_positions_lists_each_segments_positions():
    got = segment_positions(_runs(), 2)
    assert got[0].tolist() == [0, 1, 2, 3, 7, 8, 9, 10, 14, 15, 16, 17]
    assert got[1].tolist() == [5, 6, 12, 13, 19, 20, 26, 27, 33, 34]


@pytest.mark.parametrize("runs,segments,message", [
    ([[0, 20, 0]], 1, "cover 20 rows of 35"),
    ([[0, 20, 0], [21, 14, 0]], 1, "must start at row 20"),
    ([[0, 35, 1]], 1, "name a segment"),
    ([[0, 35, 0]], 2, "segment 1 has no rows"),
])
def test_runs_that_do_not_cover_the_map_in_order_are_refused(runs, segments, message):
    x, weight, bias = _inputs(torch.float32)
    with pytest.raises(RuntimeError, match=message):
        group_norm_relu_segments(x, 2, weight, bias, 1e-5, torch.tensor(runs), segments)


def test_fake_tensors_get_the_shapes():
    mode = FakeTensorMode()
    runs = mode.from_tensor(_runs())
    with mode:
        x = torch.empty(2, 8, H, W).to(memory_format=torch.channels_last)
        weight = torch.empty(8)
        y, mean, rstd = torch.ops.fad_gn_relu.forward_segments(x, weight, weight, 2, 1e-5,
                                                               runs, 2)
        assert y.shape == x.shape and mean.shape == rstd.shape == (2, 2, 2)
        grads = torch.ops.fad_gn_relu.backward_segments(y, y, x, weight, mean, rstd, 2, runs)
        assert [tuple(g.shape) for g in grads] == [tuple(x.shape), (8,), (8,)]


def test_the_layer_normalizes_per_segment_inside_a_scope_only():
    torch.manual_seed(0)
    layer = GroupNormReLU(2, 8).double()
    x = _inputs(torch.float64)[0].detach()
    runs = _runs()
    with segments_scope(runs, 2):
        inside = layer(x)
    torch.testing.assert_close(
        inside, group_norm_relu_segments_reference(x, 2, layer.weight, layer.bias, layer.eps,
                                                   runs, 2), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer(x), group_norm_relu(x, 2, layer.weight, layer.bias),
                               rtol=1e-12, atol=1e-12)
