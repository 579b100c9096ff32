"""Multi-scale deformable attention (MSDA) op: the schema, checked entry point, fake, autograd,
autocast and FLOP formula.

`multi_scale_deformable_attention` checks its inputs, promotes dtypes and calls the custom op
`fad::ms_deform_attn` (backward: `fad::ms_deform_attn_backward`). The op's implementation checks
the levels against the value length and runs the backend that `fad.ops.msda.dispatch` picks
(MODEL.OPS.MSDA_BACKEND / FAD_MSDA_BACKEND); the kernel ops `fad_msda::forward` / `backward`
that the compiled extensions implement are declared here too.

The op has fake impls (`torch.compile`, `torch.export` see one node whatever the backend),
autograd, autocast (under CUDA or CPU autocast the inputs are cast to float32 and the output is
float32; outside it half/bfloat16 run natively with float32 accumulation) and FLOP formulas
(1 multiply-add = 1 FLOP: per (n, q, m, l, p) the forward counts 4 bilinear corners x D plus D
for the attention weighting, 5 * D; the backward twice that).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from fad.errors import OpError

from ..build import define_library
from .dispatch import BACKWARD, FORWARD, backend_for

_KERNEL_LIB = define_library("fad_msda", (
    "forward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
    "Tensor sampling_loc, Tensor attn_weight) -> Tensor",
    "backward(Tensor grad_output, Tensor value, Tensor spatial_shapes, "
    "Tensor level_start_index, Tensor sampling_loc, Tensor attn_weight) "
    "-> (Tensor, Tensor, Tensor)",
))


def _fail(message: str) -> NoReturn:
    raise OpError(f"multi_scale_deformable_attention: {message}")


def check_inputs(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                 sampling_locations: Tensor, attention_weights: Tensor) -> None:
    """Raise a one-line OpError unless shapes, dtypes and devices fit together (metadata only,
    so it also runs on fake tensors while tracing)."""
    if value.dim() != 4:
        _fail(f"value must be [N, S, M, D], got shape {tuple(value.shape)}")
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        _fail("sampling_locations must be [N, Lq, M, L, P, 2], got shape "
              f"{tuple(sampling_locations.shape)}")
    n, _, m, _ = value.shape
    n_l, lq, m_l, num_levels, num_points, _ = sampling_locations.shape
    if (n_l, m_l) != (n, m):
        _fail(f"sampling_locations {tuple(sampling_locations.shape)} disagree with value "
              f"{tuple(value.shape)} on N or M")
    if tuple(attention_weights.shape) != (n, lq, m, num_levels, num_points):
        _fail(f"attention_weights must be {(n, lq, m, num_levels, num_points)} (N, Lq, M, L, P), "
              f"got {tuple(attention_weights.shape)}")
    if (tuple(spatial_shapes.shape) != (num_levels, 2)
            or tuple(level_start_index.shape) != (num_levels,)):
        _fail(f"spatial_shapes must be [{num_levels}, 2] and level_start_index [{num_levels}], "
              f"got {tuple(spatial_shapes.shape)} and {tuple(level_start_index.shape)}")
    if spatial_shapes.is_floating_point() or level_start_index.is_floating_point():
        _fail("spatial_shapes and level_start_index must be integer (int64) tensors")
    if not (value.is_floating_point() and sampling_locations.is_floating_point()
            and attention_weights.is_floating_point()):
        _fail(f"value, sampling_locations and attention_weights must be floating point, "
              f"got {value.dtype}, {sampling_locations.dtype}, {attention_weights.dtype}")
    if not value.device == sampling_locations.device == attention_weights.device:
        _fail("value, sampling_locations and attention_weights must be on one device")


def host_levels(spatial_shapes: Tensor, level_shapes: Sequence[int] | None
                ) -> list[tuple[int, int]]:
    """(H_l, W_l) per level as Python ints: from `level_shapes` (flat [H_0, W_0, H_1, ...],
    known on the host) when given, else read from `spatial_shapes` (free for CPU tensors; for
    device tensors a host sync, which is why the models pass `level_shapes`)."""
    if level_shapes is None:
        return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    if len(level_shapes) != 2 * spatial_shapes.shape[0]:
        _fail(f"level_shapes must hold H, W of each of the {spatial_shapes.shape[0]} levels, "
              f"got {len(level_shapes)} values")
    return list(zip(level_shapes[0::2], level_shapes[1::2]))


def check_levels(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                 level_shapes: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """The level shapes (`host_levels`); raise a one-line OpError unless the levels lie back to
    back and fill value's S tokens: level_start_index[l] = sum of H_k * W_k over k < l, and the
    sum over all levels = S.

    With `level_shapes`, device tensors are not read (no host sync): the caller built
    `spatial_shapes` and `level_start_index` from the same shapes. CPU tensors are always
    checked (reading them is free). Every backend runs it.
    """
    shapes = host_levels(spatial_shapes, level_shapes)
    tensors_on_host = spatial_shapes.device.type == "cpu" and level_start_index.device.type == "cpu"
    if level_shapes is not None and tensors_on_host and spatial_shapes.tolist() != [
            list(hw) for hw in shapes]:
        _fail(f"spatial_shapes {spatial_shapes.tolist()} disagree with level_shapes "
              f"{list(level_shapes)}")
    starts = level_start_index.tolist() if tensors_on_host else None
    expected = 0
    for level, (height, width) in enumerate(shapes):
        if height < 0 or width < 0 or (starts is not None and starts[level] != expected):
            break
        expected += height * width
    else:
        if expected == value.shape[1]:
            return shapes
    _fail(f"spatial_shapes {shapes} and level_start_index {starts} do not describe value's "
          f"S = {value.shape[1]} tokens (levels back to back: start_l = sum of H*W before l, "
          "all levels together = S)")


@torch.library.custom_op("fad::ms_deform_attn", mutates_args=())
def ms_deform_attn(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    level_shapes: list[int] | None = None,
) -> Tensor:
    """value [N, S, M, D], spatial_shapes [L, 2] int64, level_start_index [L] int64,
    sampling_locations [N, Lq, M, L, P, 2], attention_weights [N, Lq, M, L, P] -> [N, Lq, M*D].
    `level_shapes`: the same (H_l, W_l) as Python ints, flat [H_0, W_0, H_1, ...], or None to
    read them from `spatial_shapes` (a host sync for device tensors)."""
    check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    shapes = check_levels(value, spatial_shapes, level_start_index, level_shapes)
    return FORWARD[backend_for(value.device.type)](
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights, shapes)


def _mirror_host_read(spatial_shapes: Tensor, level_shapes: list[int] | None) -> None:
    """The op reads device shape tensors back when `level_shapes` is None; so do the fake
    impls, so that torch.compile and the device audit see that host sync."""
    if level_shapes is None and spatial_shapes.device.type != "cpu":
        host_levels(spatial_shapes, None)


@ms_deform_attn.register_fake
def _ms_deform_attn_fake(value, spatial_shapes, level_start_index, sampling_locations,
                         attention_weights, level_shapes=None):
    check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    _mirror_host_read(spatial_shapes, level_shapes)
    n, _, m, d = value.shape
    return value.new_empty((n, sampling_locations.shape[1], m * d))


@torch.library.custom_op("fad::ms_deform_attn_backward", mutates_args=())
def ms_deform_attn_backward(
    grad_output: Tensor,
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    level_shapes: list[int] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """grad_output [N, Lq, M*D] -> (grad_value, grad_sampling_locations, grad_attention_weights),
    each shaped like its input; `level_shapes` as in `ms_deform_attn`."""
    check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    shapes = check_levels(value, spatial_shapes, level_start_index, level_shapes)
    return BACKWARD[backend_for(value.device.type)](
        grad_output, value, spatial_shapes, level_start_index, sampling_locations,
        attention_weights, shapes)


@ms_deform_attn_backward.register_fake
def _ms_deform_attn_backward_fake(grad_output, value, spatial_shapes, level_start_index,
                                  sampling_locations, attention_weights, level_shapes=None):
    _mirror_host_read(spatial_shapes, level_shapes)
    return (torch.empty_like(value), torch.empty_like(sampling_locations),
            torch.empty_like(attention_weights))


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs[:5])
    ctx.level_shapes = inputs[5] if len(inputs) > 5 else None


def _backward(ctx, grad_output: Tensor):
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = (
        ctx.saved_tensors)
    grad_value, grad_loc, grad_attn = ms_deform_attn_backward(
        grad_output, value, spatial_shapes, level_start_index, sampling_locations,
        attention_weights, ctx.level_shapes)
    return grad_value, None, None, grad_loc, grad_attn, None


ms_deform_attn.register_autograd(_backward, setup_context=_setup_context)
torch.library.register_autocast("fad::ms_deform_attn", "cuda", torch.float32)
torch.library.register_autocast("fad::ms_deform_attn", "cpu", torch.float32)


def msda_flops(value_shape, sampling_locations_shape) -> int:
    """Forward multiply-adds: N * Lq * M * L * P * 5 * D (4 bilinear corners + 1 weighting)."""
    d = value_shape[-1]
    n, lq, m, num_levels, num_points, _ = sampling_locations_shape
    return n * lq * m * num_levels * num_points * 5 * d


@register_flop_formula(torch.ops.fad.ms_deform_attn)
def _msda_flop(value_shape, spatial_shapes_shape, level_start_index_shape,
               sampling_locations_shape, attention_weights_shape, *args, out_shape=None,
               **kwargs) -> int:
    return msda_flops(value_shape, sampling_locations_shape)


@register_flop_formula(torch.ops.fad.ms_deform_attn_backward)
def _msda_backward_flop(grad_output_shape, value_shape, spatial_shapes_shape,
                        level_start_index_shape, sampling_locations_shape,
                        attention_weights_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * msda_flops(value_shape, sampling_locations_shape)


def multi_scale_deformable_attention(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    level_shapes: Sequence[tuple[int, int]] | None = None,
) -> Tensor:
    """Multi-scale deformable attention (Deformable DETR), differentiable in value, locations
    and weights.

    Args:
        value: [N, S, M, D] per-head values of all levels, S = sum_l H_l * W_l.
        spatial_shapes: [L, 2] int64 (H_l, W_l).
        level_start_index: [L] int64 exclusive cumsum of H_l * W_l.
        sampling_locations: [N, Lq, M, L, P, 2] (x, y) normalised to [0, 1] over each map.
        attention_weights: [N, Lq, M, L, P].
        level_shapes: the (H_l, W_l) of `spatial_shapes` as Python ints (the models know them
            from their feature maps). Without them the op reads `spatial_shapes` back, a host
            sync per call (forward and backward) for device tensors; with them it reads no
            tensor back, so the call can be captured in a CUDA graph or compiled whole.

    Returns:
        [N, Lq, M * D]: out[n, q, m] = sum_{l, p} A * bilinear(V_l[n, m], x * W_l - 0.5,
        y * H_l - 0.5); corners outside the map read as zero.

    Raises:
        OpError: shapes, dtypes, devices or levels that do not fit together (every backend).

    Mixed floating dtypes are promoted to a common one; under autocast the op computes in
    float32 and returns float32.
    """
    check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    dtype = torch.promote_types(torch.promote_types(value.dtype, sampling_locations.dtype),
                                attention_weights.dtype)
    value, sampling_locations, attention_weights = (
        t.to(dtype) for t in (value, sampling_locations, attention_weights))
    flat = None if level_shapes is None else [v for hw in level_shapes for v in hw]
    return ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations,
                          attention_weights, flat)
