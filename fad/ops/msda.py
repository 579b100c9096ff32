"""`multi_scale_deformable_attention`: checked entry point to the `fad::ms_deform_attn` op."""
from __future__ import annotations

import torch
from torch import Tensor

from .msda_op import ms_deform_attn


def _fail(message: str) -> None:
    raise ValueError(f"fad/ops/msda.py: {message}")


def check_msda_inputs(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                      sampling_locations: Tensor, attention_weights: Tensor) -> None:
    """Raise a one-line ValueError unless the shapes, dtypes and devices fit together."""
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
    if tuple(spatial_shapes.shape) != (num_levels, 2) or tuple(level_start_index.shape) != (
            num_levels,):
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


def multi_scale_deformable_attention(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Multi-scale deformable attention (Deformable DETR), differentiable in value, locations
    and weights.

    Args:
        value: [N, S, M, D] per-head values of all levels, S = sum_l H_l * W_l.
        spatial_shapes: [L, 2] int64 (H_l, W_l).
        level_start_index: [L] int64 exclusive cumsum of H_l * W_l.
        sampling_locations: [N, Lq, M, L, P, 2] (x, y) normalised to [0, 1] over each map.
        attention_weights: [N, Lq, M, L, P].

    Returns:
        [N, Lq, M * D]: out[n, q, m] = sum_{l, p} A * bilinear(V_l[n, m], x * W_l - 0.5,
        y * H_l - 0.5); corners outside the map read as zero.

    Mixed floating dtypes are promoted to a common one; under autocast the op computes in
    float32 and returns float32. The backend (compiled kernel or grid_sample reference) is
    chosen by `fad.ops.backend`.
    """
    check_msda_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                      attention_weights)
    dtype = torch.promote_types(torch.promote_types(value.dtype, sampling_locations.dtype),
                                attention_weights.dtype)
    value, sampling_locations, attention_weights = (
        t.to(dtype) for t in (value, sampling_locations, attention_weights))
    return ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations,
                          attention_weights)
