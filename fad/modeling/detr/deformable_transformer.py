"""Deformable encoder and decoder stacks on `fad.ops.MSDeformAttn` (post-norm layers)."""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fad.ops import MSDeformAttn

from .box_ops import inverse_sigmoid


def valid_ratios(mask: Tensor) -> Tensor:
    """[N, H, W] bool padding mask -> [N, 2] (valid width / W, valid height / H)."""
    _, h, w = mask.shape
    valid_h = (~mask[:, :, 0]).sum(1).float() / h
    valid_w = (~mask[:, 0, :]).sum(1).float() / w
    return torch.stack([valid_w, valid_h], -1)


def encoder_reference_points(spatial_shapes: list[tuple[int, int]], ratios: Tensor) -> Tensor:
    """Token centres as reference points for every level.

    Args:
        spatial_shapes: (H_l, W_l) per level.
        ratios: [N, L, 2] valid ratios (w, h) per level.

    Returns:
        [N, S, L, 2] (x, y): each token's centre as a fraction of its level's valid size, then
        mapped into every level's padded map by that level's valid ratio.
    """
    refs = []
    for level, (h, w) in enumerate(spatial_shapes):
        ys, xs = torch.meshgrid(
            torch.linspace(0.5, h - 0.5, h, dtype=ratios.dtype, device=ratios.device),
            torch.linspace(0.5, w - 0.5, w, dtype=ratios.dtype, device=ratios.device),
            indexing="ij")
        ref_y = ys.reshape(1, -1) / (ratios[:, None, level, 1] * h)
        ref_x = xs.reshape(1, -1) / (ratios[:, None, level, 0] * w)
        refs.append(torch.stack((ref_x, ref_y), -1))
    return torch.cat(refs, 1)[:, :, None] * ratios[:, None]


class FFN(nn.Module):
    """x -> LN(x + drop(W2 drop(ReLU(W1 x)))) on [..., d_model]."""

    def __init__(self, d_model: int, d_ffn: int, dropout: float):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.dropout2(self.linear2(self.dropout1(F.relu(self.linear1(x))))))


class EncoderLayer(nn.Module):
    """Queries attend (MSDA) to a value map, then add & LN and an FFN.

    `forward(query [N, Lq, C], query_pos [N, Lq, C], reference_points [N, Lq, L, 2],
    value [N, S, C], spatial_shapes [L, 2], level_start_index [L], padding_mask [N, S])`
    -> [N, Lq, C]. Dense encoder: query = value = all tokens; Sparse DETR: selected tokens.
    """

    def __init__(self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int,
                 n_points: int):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)
        self.ffn = FFN(d_model, d_ffn, dropout)

    def forward(self, query: Tensor, query_pos: Tensor, reference_points: Tensor, value: Tensor,
                spatial_shapes: Tensor, level_start_index: Tensor, padding_mask: Tensor
                ) -> Tensor:
        attn = self.self_attn(query + query_pos, reference_points, value, spatial_shapes,
                              level_start_index, padding_mask)
        return self.ffn(self.norm(query + self.dropout(attn)))


class DeformableEncoder(nn.Module):
    """`num_layers` copies of `layer`, every token a query (the dense Deformable DETR encoder)."""

    def __init__(self, layer: EncoderLayer, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    def forward(self, src: Tensor, pos: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                ratios: Tensor, padding_mask: Tensor) -> tuple[Tensor, list[Tensor]]:
        """src, pos [N, S, C]; ratios [N, L, 2]; padding_mask [N, S].

        Returns the memory [N, S, C] and an empty list (no per-layer outputs to supervise).
        """
        ref = encoder_reference_points([tuple(s) for s in spatial_shapes.tolist()], ratios)
        for layer in self.layers:
            src = layer(src, pos, ref, src, spatial_shapes, level_start_index, padding_mask)
        return src, []


class DecoderLayer(nn.Module):
    """Self-attention among queries -> MSDA cross-attention to the memory -> FFN (add & LN each).

    `forward(tgt [N, Q, C], query_pos [N, Q, C], reference_points [N, Q, L, 2|4],
    memory [N, S, C], spatial_shapes, level_start_index, padding_mask, return_sampling)` ->
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
                return_sampling: bool = False):
        q = k = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, tgt, need_weights=False)[0]))
        out = self.cross_attn(tgt + query_pos, reference_points, memory, spatial_shapes,
                              level_start_index, padding_mask, return_sampling=return_sampling)
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
                box_head: Callable[[int], nn.Module] | None = None, return_sampling: bool = False
                ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor] | None]:
        """Decode `tgt` [N, Q, C] around `reference_points` [N, Q, 2] points or [N, Q, 4] boxes.

        `ratios` [N, L, 2] maps references from the valid image into each padded level. With
        `box_head` (iterative box refinement), after layer i the references become
        sigmoid(box_head(i)(output) + inverse_sigmoid(ref)), detached.

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
                        padding_mask, return_sampling)
            if return_sampling:
                output, (loc, weight) = out
                locs.append(loc)
                weights.append(weight)
            else:
                output = out
            if box_head is not None:
                delta = box_head(lid)(output)
                if reference_points.shape[-1] == 4:
                    new_ref = (delta + inverse_sigmoid(reference_points)).sigmoid()
                else:
                    new_ref = torch.cat([delta[..., :2] + inverse_sigmoid(reference_points),
                                         delta[..., 2:]], -1).sigmoid()
                reference_points = new_ref.detach()
            hs.append(output)
            refs.append(reference_points)
        sampling = (torch.stack(locs), torch.stack(weights)) if return_sampling else None
        return torch.stack(hs), torch.stack(refs), sampling
