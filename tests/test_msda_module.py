"""MSDeformAttn: initialisation pattern, reference points / boxes, padding mask, errors."""
import pytest
import torch

from fad.ops import MSDeformAttn, ms_deform_attn_reference, set_backend
from fad.ops.msda.inputs import level_tensors

SHAPES = [(6, 5), (3, 3)]


@pytest.fixture(autouse=True)
def _reference_backend():
    set_backend("msda", "reference")
    yield
    set_backend("msda", None)


def _data(n=2, lq=4, c=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes, starts = level_tensors(SHAPES)
    s = int(shapes.prod(1).sum())
    return (torch.randn(n, lq, c, generator=g), torch.randn(n, s, c, generator=g), shapes, starts,
            g)


def test_offset_bias_points_along_head_directions():
    layer = MSDeformAttn(d_model=16, n_levels=2, n_heads=8, n_points=3)
    bias = layer.sampling_offsets.bias.view(8, 2, 3, 2)
    directions = [(1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1)]
    for h, (dx, dy) in enumerate(directions):
        for p in range(3):
            expected = torch.tensor([dx, dy], dtype=torch.float32) * (p + 1)
            torch.testing.assert_close(bias[h, 0, p], expected, atol=1e-6, rtol=0)
            torch.testing.assert_close(bias[h, 1, p], expected, atol=1e-6, rtol=0)
    assert layer.sampling_offsets.weight.abs().max() == 0
    assert layer.attention_weights.weight.abs().max() == 0
    assert layer.attention_weights.bias.abs().max() == 0
    assert layer.value_proj.bias.abs().max() == 0 and layer.output_proj.bias.abs().max() == 0


def test_initial_attention_is_uniform_and_locations_follow_the_pattern():
    query, memory, shapes, starts, g = _data()
    layer = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=2)
    ref = torch.rand(2, 4, 2, 2, generator=g)
    out, loc, attn = layer(query, ref, memory, shapes, starts, return_sampling=True)
    assert out.shape == (2, 4, 16)
    torch.testing.assert_close(attn, torch.full((2, 4, 4, 2, 2), 0.25))
    # head 1 of 4 points along +y: point p sits (p + 1) pixels below the reference point
    for level, (h, _) in enumerate(SHAPES):
        for p in range(2):
            expected = ref[:, :, level] + torch.tensor([0.0, (p + 1) / h])
            torch.testing.assert_close(loc[:, :, 1, level, p], expected, atol=1e-6, rtol=0)


def test_reference_boxes_scale_offsets_by_box_size():
    query, memory, shapes, starts, g = _data(seed=1)
    layer = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=2)
    boxes = torch.rand(2, 4, 2, 4, generator=g)
    _, loc, _ = layer(query, boxes, memory, shapes, starts, return_sampling=True)
    # head 0 points along +x: offset (p + 1) / P * w * 0.5
    for p in range(2):
        expected = boxes[:, :, :, :2] + torch.stack(
            [(p + 1) / 2 * boxes[:, :, :, 2] * 0.5, torch.zeros_like(boxes[:, :, :, 0])], -1)
        torch.testing.assert_close(loc[:, :, 0, :, p], expected, atol=1e-6, rtol=0)


def test_output_matches_manual_composition():
    query, memory, shapes, starts, g = _data(seed=2)
    layer = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=2)
    torch.nn.init.normal_(layer.sampling_offsets.weight, std=0.1)
    torch.nn.init.normal_(layer.attention_weights.weight, std=0.3)
    ref = torch.rand(2, 4, 2, 2, generator=g)
    out, loc, attn = layer(query, ref, memory, shapes, starts, return_sampling=True)
    value = layer.value_proj(memory).view(2, -1, 4, 4)
    expected = layer.output_proj(ms_deform_attn_reference(value, shapes, starts, loc, attn))
    torch.testing.assert_close(out, expected)
    assert attn.sum((-1, -2)).sub(1).abs().max() < 1e-6


def test_padding_mask_hides_padded_tokens():
    query, memory, shapes, starts, g = _data(seed=3)
    layer = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=2)
    torch.nn.init.normal_(layer.sampling_offsets.weight, std=0.5)
    ref = torch.rand(2, 4, 2, 2, generator=g)
    mask = torch.zeros(2, memory.shape[1], dtype=torch.bool)
    mask[0, ::3] = True
    mask[1, -5:] = True
    changed = memory.clone()
    changed[mask] = 100 * torch.randn(int(mask.sum()), 16, generator=g)
    out = layer(query, ref, memory, shapes, starts, mask)
    torch.testing.assert_close(layer(query, ref, changed, shapes, starts, mask), out)
    assert not torch.allclose(layer(query, ref, changed, shapes, starts), out)


def test_kernel_backend_matches_reference_backend():
    query, memory, shapes, starts, g = _data(seed=4)
    layer = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=2)
    torch.nn.init.normal_(layer.sampling_offsets.weight, std=0.5)
    ref = torch.rand(2, 4, 2, 2, generator=g)
    out_ref = layer(query, ref, memory, shapes, starts)
    grads_ref = torch.autograd.grad(out_ref.square().sum(), list(layer.parameters()))
    set_backend("msda", "cpp")
    out = layer(query, ref, memory, shapes, starts)
    grads = torch.autograd.grad(out.square().sum(), list(layer.parameters()))
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="not divisible"):
        MSDeformAttn(d_model=10, n_heads=4)
    query, memory, shapes, starts, _ = _data()
    layer = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=2)
    with pytest.raises(ValueError, match="reference_points must end in 2"):
        layer(query, torch.rand(2, 4, 2, 3), memory, shapes, starts)


@pytest.mark.slow
def test_inductor_compiles_the_layer():
    """torch.compile (inductor, fullgraph) keeps the MSDA op as one kernel call, same results."""
    query, memory, shapes, starts, g = _data(seed=5)
    layer = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=2)
    torch.nn.init.normal_(layer.sampling_offsets.weight, std=0.5)
    ref = torch.rand(2, 4, 2, 2, generator=g)
    set_backend("msda", "cpp")
    eager = layer(query, ref, memory, shapes, starts)
    eager_grads = torch.autograd.grad(eager.sum(), list(layer.parameters()))
    compiled = torch.compile(layer, fullgraph=True)(query, ref, memory, shapes, starts)
    grads = torch.autograd.grad(compiled.sum(), list(layer.parameters()))
    torch.testing.assert_close(compiled, eager)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b)
