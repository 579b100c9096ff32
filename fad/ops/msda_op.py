"""The `fad::ms_deform_attn` custom op: kernels or reference, fake impl, autograd, autocast, FLOPs.

Forward and backward are two custom ops (`fad::ms_deform_attn`, `fad::ms_deform_attn_backward`),
so both dispatch to the compiled kernels (`torch.ops.fad_msda.*`, built from csrc/msda) when the
backend allows, else to the pure-PyTorch reference. Fake impls make the op traceable by
`torch.compile` / `torch.export`.

Autocast: under CUDA or CPU autocast the inputs are cast to float32 and the output is float32.
Outside autocast half/bfloat16 inputs run natively (float32 accumulation) and return their dtype.

FLOPs (1 multiply-add = 1 FLOP): per (n, q, m, l, p) the forward counts 4 bilinear corners x D
multiply-adds plus D for the attention weighting, i.e. 5 * D; the backward counts twice that.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from .backend import use_kernel
from .msda_reference import ms_deform_attn_reference, ms_deform_attn_reference_backward


def _shapes_on(spatial_shapes: Tensor, level_start_index: Tensor, device: torch.device):
    return (spatial_shapes.to(device=device, dtype=torch.int64).contiguous(),
            level_start_index.to(device=device, dtype=torch.int64).contiguous())


@torch.library.custom_op("fad::ms_deform_attn", mutates_args=())
def ms_deform_attn(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """value [N, S, M, D], spatial_shapes [L, 2], level_start_index [L],
    sampling_locations [N, Lq, M, L, P, 2], attention_weights [N, Lq, M, L, P] -> [N, Lq, M*D]."""
    if use_kernel(value.device.type):
        shapes, starts = _shapes_on(spatial_shapes, level_start_index, value.device)
        return torch.ops.fad_msda.forward(value.contiguous(), shapes, starts,
                                          sampling_locations.contiguous(),
                                          attention_weights.contiguous())
    with torch.no_grad():
        return ms_deform_attn_reference(value, spatial_shapes, level_start_index,
                                        sampling_locations, attention_weights)


@ms_deform_attn.register_fake
def _ms_deform_attn_fake(value, spatial_shapes, level_start_index, sampling_locations,
                         attention_weights):
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
) -> tuple[Tensor, Tensor, Tensor]:
    """grad_output [N, Lq, M*D] -> (grad_value, grad_sampling_locations, grad_attention_weights),
    each shaped like its input."""
    if use_kernel(value.device.type):
        shapes, starts = _shapes_on(spatial_shapes, level_start_index, value.device)
        grad_value, grad_loc, grad_attn = torch.ops.fad_msda.backward(
            grad_output.contiguous(), value.contiguous(), shapes, starts,
            sampling_locations.contiguous(), attention_weights.contiguous())
        return grad_value, grad_loc, grad_attn
    return ms_deform_attn_reference_backward(grad_output, value, spatial_shapes,
                                             level_start_index, sampling_locations,
                                             attention_weights)


@ms_deform_attn_backward.register_fake
def _ms_deform_attn_backward_fake(grad_output, value, spatial_shapes, level_start_index,
                                  sampling_locations, attention_weights):
    return (torch.empty_like(value), torch.empty_like(sampling_locations),
            torch.empty_like(attention_weights))


def _setup_context(ctx, inputs, output) -> None:
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = inputs
    ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations,
                          attention_weights)


def _backward(ctx, grad_output: Tensor):
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = (
        ctx.saved_tensors)
    grad_value, grad_loc, grad_attn = ms_deform_attn_backward(
        grad_output, value, spatial_shapes, level_start_index, sampling_locations,
        attention_weights)
    return grad_value, None, None, grad_loc, grad_attn


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
