"""The deformable decoder on `fad.ops.MSDeformAttn` (post-norm layers), with iterative box
refinement."""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from fad.ops import MSDeformAttn

from .box_ops import refine_boxes
from .encoder import FFN


class DecoderLayer(nn.Module):
    """Self-attention among queries -> MSDA cross-attention to the memory -> FFN (add & LN each).

    `forward(tgt [N, Q, C], query_pos [N, Q, C], reference_points [N, Q, L, 2|4],
    memory [N, S, C], spatial_shapes, level_start_index, padding_mask, return_sampling,
    level_shapes)` (`level_shapes`: the (H_l, W_l) as Python ints) ->
    tgt [N, Q, C], plus (sampling_locations, attention_weights) of the cross-attention when
    `return_sampling`.
    """

    def __init__(self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int,
                 n_points: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn = FFN(d_model, d_ffn, dropout)

    def forward(self, tgt: Tensor, query_pos: Tensor, reference_points: Tensor, memory: Tensor,
                spatial_shapes: Tensor, level_start_index: Tensor, padding_mask: Tensor,
                return_sampling: bool = False, *, level_shapes: Sequence[tuple[int, int]]):
        q = k = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, tgt, need_weights=False)[0]))
        out = self.cross_attn(tgt + query_pos, reference_points, memory, spatial_shapes,
                              level_start_index, padding_mask, return_sampling=return_sampling,
                              level_shapes=level_shapes)
        attn, sampling = (out[0], out[1:]) if return_sampling else (out, None)
        tgt = self.ffn(self.norm2(tgt + self.dropout2(attn)))
        return (tgt, sampling) if return_sampling else tgt


class DeformableDecoder(nn.Module):
    """`num_layers` decoder layers; every layer's output and reference points are returned."""

    def __init__(self, layer: DecoderLayer, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    def forward(self, tgt: Tensor, reference_points: Tensor, memory: Tensor,
                spatial_shapes: Tensor, level_start_index: Tensor, ratios: Tensor,
                query_pos: Tensor, padding_mask: Tensor,
                box_head: Callable[[int], nn.Module] | None = None, return_sampling: bool = False,
                *, level_shapes: Sequence[tuple[int, int]]
                ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor] | None]:
        """Decode `tgt` [N, Q, C] around `reference_points` [N, Q, 2] points or [N, Q, 4] boxes.

        `ratios` [N, L, 2] maps references from the valid image into each padded level. With
        `box_head` (iterative box refinement), after layer i the references become
        `refine_boxes(box_head(i)(output), ref)`, detached. `level_shapes`: the (H_l, W_l) of
        `spatial_shapes` as Python ints.

        Returns:
            hs [D, N, Q, C]; references [D, N, Q, 2|4] used by each layer's successor (the
            refined ones, or the input ones without refinement); and, with `return_sampling`,
            the cross-attention sampling locations [D, N, Q, M, L, P, 2] and attention weights
            [D, N, Q, M, L, P].
        """
        hs, refs, locs, weights = [], [], [], []
        output = tgt
        for lid, layer in enumerate(self.layers):
            if reference_points.shape[-1] == 4:
                ref_input = reference_points[:, :, None] * torch.cat([ratios, ratios], -1)[:, None]
            else:
                ref_input = reference_points[:, :, None] * ratios[:, None]
            out = layer(output, query_pos, ref_input, memory, spatial_shapes, level_start_index,
                        padding_mask, return_sampling, level_shapes=level_shapes)
            if return_sampling:
                output, (loc, weight) = out
                locs.append(loc)
                weights.append(weight)
            else:
                output = out
            if box_head is not None:
                reference_points = refine_boxes(box_head(lid)(output), reference_points).detach()
            hs.append(output)
            refs.append(reference_points)
        sampling = (torch.stack(locs), torch.stack(weights)) if return_sampling else None
        return torch.stack(hs), torch.stack(refs), sampling
