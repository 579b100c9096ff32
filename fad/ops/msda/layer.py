"""`MSDeformAttn`: the multi-scale deformable attention layer of Deformable DETR, and
`level_tensors`, the level layout tensors its callers make from the feature-map shapes."""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fad.errors import OpError

from .schema import multi_scale_deformable_attention


def level_tensors(shapes: Sequence[tuple[int, int]], device: str | torch.device = "cpu"
                  ) -> tuple[Tensor, Tensor]:
    """spatial_shapes [L, 2] and level_start_index [L] (int64) of the levels (H_l, W_l), made
    on `device` from the Python ints (no host tensor, no copy: nothing that waits for a GPU)."""
    if not shapes:
        return (torch.zeros(0, 2, dtype=torch.int64, device=device),
                torch.zeros(0, dtype=torch.int64, device=device))
    starts = itertools.accumulate((h * w for h, w in shapes[:-1]), initial=0)
    values = [v for hw in shapes for v in hw] + list(starts)
    flat = torch.stack([torch.full((), v, dtype=torch.int64, device=device) for v in values])
    return flat[:2 * len(shapes)].view(-1, 2), flat[2 * len(shapes):]


class MSDeformAttn(nn.Module):
    """Each query attends to `n_points` sampled points per head and level around a reference.

    Args:
        d_model: channels C (split into `n_heads` heads of C / n_heads channels).
        n_levels: feature levels L.
        n_heads: attention heads M.
        n_points: sampling points P per head and level.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        if d_model % n_heads:
            raise OpError(f"MSDeformAttn: d_model={d_model} is not divisible by "
                          f"n_heads={n_heads}; pick n_heads that divides d_model")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Offsets start on a star of head directions, attention uniform, projections xavier."""
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.n_heads, dtype=torch.float64) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([theta.cos(), theta.sin()], dim=-1)  # [M, 2]
        grid = grid / grid.abs().max(dim=-1, keepdim=True).values
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float64).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        input_spatial_shapes: Tensor,
        input_level_start_index: Tensor,
        input_padding_mask: Tensor | None = None,
        return_sampling: bool = False,
        level_shapes: Sequence[tuple[int, int]] | None = None,
    ) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        """Attend from `query` to the flattened multi-level map `input_flatten`.

        Args:
            query: [N, Lq, C].
            reference_points: [N, Lq, L, 2] points (x, y) in [0, 1], or [N, Lq, L, 4] boxes
                (cx, cy, w, h) in [0, 1]; offsets are scaled by the level size or the box size.
            input_flatten: [N, S, C] tokens of all levels, S = sum_l H_l * W_l.
            input_spatial_shapes: [L, 2] int64 (H_l, W_l).
            input_level_start_index: [L] int64 first token of each level.
            input_padding_mask: [N, S] bool, True on padded tokens (their values are zeroed).
            return_sampling: also return the sampling locations and attention weights.
            level_shapes: the (H_l, W_l) of `input_spatial_shapes` as Python ints; pass them
                on a GPU (without them the op reads the shapes back: a host sync per call).

        Returns:
            [N, Lq, C]; with `return_sampling`, also sampling_locations [N, Lq, M, L, P, 2]
            and attention_weights [N, Lq, M, L, P] (after the softmax).
        """
        n, len_q, _ = query.shape
        _, len_in, _ = input_flatten.shape
        m, num_levels, num_points = self.n_heads, self.n_levels, self.n_points
        if reference_points.shape[-1] not in (2, 4):
            raise OpError("MSDeformAttn: reference_points must end in 2 (x, y) or 4 "
                          f"(cx, cy, w, h), got shape {tuple(reference_points.shape)}")
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(n, len_in, m, self.d_model // m)
        offsets = self.sampling_offsets(query).view(n, len_q, m, num_levels, num_points, 2)
        weights = self.attention_weights(query).view(n, len_q, m, num_levels * num_points)
        weights = weights.softmax(-1).view(n, len_q, m, num_levels, num_points)
        if reference_points.shape[-1] == 2:
            normalizer = torch.stack([input_spatial_shapes[..., 1], input_spatial_shapes[..., 0]],
                                     -1).to(offsets)
            locations = (
                reference_points[:, :, None, :, None, :]
                + offsets / normalizer[None, None, None, :, None, :]
            )
        else:
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / num_points * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        output = multi_scale_deformable_attention(
            value, input_spatial_shapes, input_level_start_index, locations, weights,
            level_shapes)
        output = self.output_proj(output)
        if return_sampling:
            return output, locations, weights
        return output
