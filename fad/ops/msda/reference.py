"""Pure-PyTorch reference of multi-scale deformable attention (MSDA), built on `grid_sample`.

Correct on every device and dtype and differentiable by autograd, but it materialises a
[N*M, D, Lq, L*P] intermediate; the compiled and Triton kernels (`fad.ops.msda.dispatch`)
avoid that.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _levels(spatial_shapes: Tensor, level_shapes: Sequence[tuple[int, int]] | None
            ) -> list[tuple[int, int]]:
    if level_shapes is not None:
        return list(level_shapes)
    return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]


def ms_deform_attn_reference(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    level_shapes: Sequence[tuple[int, int]] | None = None,
) -> Tensor:
    """Multi-scale deformable attention by bilinear `grid_sample` per level.

    Args:
        value: [N, S, M, D] per-head values of all levels, S = sum_l H_l * W_l.
        spatial_shapes: [L, 2] int64 (H_l, W_l).
        level_start_index: [L] int64 offset of each level in S (unused: the levels are
            contiguous, so splitting by H_l * W_l gives the same slices).
        sampling_locations: [N, Lq, M, L, P, 2] (x, y) in [0, 1] over each level's map.
        attention_weights: [N, Lq, M, L, P].
        level_shapes: (H_l, W_l) as Python ints, or None to read `spatial_shapes` (a host
            sync for device tensors).

    Returns:
        [N, Lq, M * D]: out[n, q, m] = sum_{l, p} A[n, q, m, l, p] * bilinear(V_l[n, m], loc),
        sampled with half-pixel centres (align_corners=False) and zero padding.
    """
    del level_start_index
    n, _, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = sampling_locations.shape
    shapes = _levels(spatial_shapes, level_shapes)
    value_list = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for level, (h, w) in enumerate(shapes):
        # [N, H*W, M, D] -> [N*M, D, H, W]
        value_l = value_list[level].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        # [N, Lq, M, P, 2] -> [N*M, Lq, P, 2]
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros",
                                     align_corners=False))
    # [N, Lq, M, L, P] -> [N*M, 1, Lq, L*P]
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, num_levels * num_points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    return out.view(n, m * d, lq).transpose(1, 2).contiguous()


def ms_deform_attn_reference_backward(
    grad_output: Tensor,
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    level_shapes: Sequence[tuple[int, int]] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of `ms_deform_attn_reference` in closed form (no autograd graph needed).

    Args:
        grad_output: [N, Lq, M * D]; the other arguments as in `ms_deform_attn_reference`.

    Returns:
        (grad_value [N, S, M, D], grad_sampling_locations [N, Lq, M, L, P, 2],
        grad_attention_weights [N, Lq, M, L, P]).
    """
    del level_start_index
    n, _, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = sampling_locations.shape
    shapes = _levels(spatial_shapes, level_shapes)
    value_list = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1
    # [N, Lq, M*D] -> [N*M, D, Lq, 1]
    grad_out = grad_output.view(n, lq, m, d).permute(0, 2, 3, 1).reshape(n * m, d, lq, 1)
    grad_values, grad_grids, grad_weights = [], [], []
    for level, (h, w) in enumerate(shapes):
        value_l = value_list[level].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # [N*M, Lq, P, 2]
        weight_l = attention_weights[:, :, :, level].transpose(1, 2)
        weight_l = weight_l.reshape(n * m, 1, lq, num_points)
        sampled = F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros",
                                align_corners=False)  # [N*M, D, Lq, P]
        grad_weights.append((sampled * grad_out).sum(1))  # [N*M, Lq, P]
        grad_value_l, grad_grid_l = torch.ops.aten.grid_sampler_2d_backward(
            grad_out * weight_l, value_l, grid_l, 0, 0, False, [True, True]
        )
        grad_values.append(grad_value_l.view(n, m, d, h * w).permute(0, 3, 1, 2))
        grad_grids.append(grad_grid_l.view(n, m, lq, num_points, 2))
    grad_value = torch.cat(grad_values, dim=1).contiguous()
    grad_locations = 2 * torch.stack(grad_grids, dim=3).transpose(1, 2).contiguous()
    grad_attention = (
        torch.stack(grad_weights, dim=-2).view(n, m, lq, num_levels, num_points).transpose(1, 2)
    ).contiguous()
    return grad_value, grad_locations, grad_attention
