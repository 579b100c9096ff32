"""The dense deformable encoder on `fad.ops.MSDeformAttn` (post-norm layers): valid ratios,
encoder reference points, the FFN shared with the decoder, encoder layer and stack."""
from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fad.ops import MSDeformAttn


def valid_ratios(mask: Tensor) -> Tensor:
    """[N, H, W] bool padding mask -> [N, 2] (valid width / W, valid height / H)."""
    _, h, w = mask.shape
    valid_h = (~mask[:, :, 0]).sum(1).float() / h
    valid_w = (~mask[:, 0, :]).sum(1).float() / w
    return torch.stack([valid_w, valid_h], -1)


def encoder_reference_points(spatial_shapes: Sequence[tuple[int, int]], ratios: Tensor
                             ) -> Tensor:
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
        # cell centres 0.5 .. size - 0.5 (linspace's values; arange traces with symbolic sizes)
        ys, xs = torch.meshgrid(
            (torch.arange(h, dtype=torch.float32, device=ratios.device) + 0.5).to(ratios.dtype),
            (torch.arange(w, dtype=torch.float32, device=ratios.device) + 0.5).to(ratios.dtype),
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
    value [N, S, C], spatial_shapes [L, 2], level_start_index [L], padding_mask [N, S],
    level_shapes)` -> [N, Lq, C], `level_shapes` the (H_l, W_l) as Python ints. Dense encoder:
    query = value = all tokens; Sparse DETR: selected tokens.
    """

    def __init__(self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int,
                 n_points: int):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)
        self.ffn = FFN(d_model, d_ffn, dropout)

    def forward(self, query: Tensor, query_pos: Tensor, reference_points: Tensor, value: Tensor,
                spatial_shapes: Tensor, level_start_index: Tensor, padding_mask: Tensor,
                level_shapes: Sequence[tuple[int, int]]) -> Tensor:
        attn = self.self_attn(query + query_pos, reference_points, value, spatial_shapes,
                              level_start_index, padding_mask, level_shapes=level_shapes)
        return self.ffn(self.norm(query + self.dropout(attn)))


class DeformableEncoder(nn.Module):
    """`num_layers` copies of `layer`, every token a query (the dense Deformable DETR encoder)."""

    def __init__(self, layer: EncoderLayer, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    def forward(self, src: Tensor, pos: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                ratios: Tensor, padding_mask: Tensor, *, level_shapes: Sequence[tuple[int, int]]
                ) -> tuple[Tensor, list[Tensor]]:
        """src, pos [N, S, C]; ratios [N, L, 2]; padding_mask [N, S]; `level_shapes` the
        (H_l, W_l) of `spatial_shapes` as Python ints.

        Returns the memory [N, S, C] and an empty list (no per-layer outputs to supervise).
        """
        ref = encoder_reference_points(level_shapes, ratios)
        for layer in self.layers:
            src = layer(src, pos, ref, src, spatial_shapes, level_start_index, padding_mask,
                        level_shapes)
        return src, []
