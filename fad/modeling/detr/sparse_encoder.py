"""Sparse DETR: token scoring network, per-image token budget, and the sparse encoder.

Only the top-k_i tokens of image i (by the scoring network's logit) are encoder queries; they
attend to the full, current token map and are scattered back after every layer, while the other
tokens keep their backbone features.
"""
from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import torch
from torch import Tensor, nn

from .encoder import DeformableEncoder, encoder_reference_points


class ScoringNetwork(nn.Module):
    """Token saliency: [N, S, C] -> [N, S] logits, padded tokens set to the batch minimum.

    LN -> Linear(C, C) -> GELU, split into a local half and a global half (averaged over all
    tokens and broadcast), concatenated -> Linear(C, C/2) -> GELU -> Linear(C/2, C/4) -> GELU
    -> Linear(C/4, 1).
    """

    def __init__(self, d_model: int):
        super().__init__()
        self.layer1 = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, d_model), nn.GELU())
        self.layer2 = nn.Sequential(
            nn.Linear(d_model, d_model // 2), nn.GELU(),
            nn.Linear(d_model // 2, d_model // 4), nn.GELU(),
            nn.Linear(d_model // 4, 1))
        self.local_dim = d_model // 2

    def forward(self, x: Tensor, padding_mask: Tensor) -> Tensor:
        z = self.layer1(x)
        z_local, z_global = z[..., :self.local_dim], z[..., self.local_dim:]
        z_global = z_global.mean(1, keepdim=True).expand(-1, z.shape[1], -1)
        logits = self.layer2(torch.cat([z_local, z_global], -1)).squeeze(-1)
        return logits.masked_fill(padding_mask, logits.min().detach())


def keep_ratio(rho: float) -> tuple[int, int]:
    """rho as a fraction p / q (q <= 10**6: rho = 0.1 -> (1, 10)), so the token counts below are
    integer arithmetic: exact, the same on the host and on the device, and symbolic under
    torch.export (a float product truncated by int() pins the traced size)."""
    ratio = Fraction(rho).limit_denominator(10**6)
    return ratio.numerator, ratio.denominator


def sparse_token_counts(padding_mask: Tensor, rho: float) -> Tensor:
    """Per-image encoder query budget k_i = floor(rho * valid_tokens_i) + 1, at most S.

    `padding_mask` [N, S] bool (True = padded) -> [N] int64.
    """
    p, q = keep_ratio(rho)
    valid = (~padding_mask).sum(1)
    return (torch.div(valid * p, q, rounding_mode="floor") + 1).clamp(max=padding_mask.shape[1])


def token_budget(num_tokens: int, rho: float) -> int:
    """K = floor(rho * S) + 1, at most S: the largest k_i of `sparse_token_counts` for S tokens
    per image, known on the host from the shapes (so selecting K tokens reads nothing back
    from the device; image i uses the first k_i <= K of them). A symbolic S (a dynamic export)
    gives a symbolic K."""
    p, q = keep_ratio(rho)
    if p >= q:
        return num_tokens
    return num_tokens * p // q + 1  # <= S for rho < 1, without a min to guard on


def select_tokens(logits: Tensor, padding_mask: Tensor, k: int) -> Tensor:
    """Indices [N, k] of the `k` highest-scoring tokens, best first per image (k >= every k_i,
    e.g. `token_budget`).

    Padded tokens rank last. The selection is not differentiable.
    """
    ranked = logits.detach().masked_fill(padding_mask, float("-inf"))
    return ranked.topk(k, dim=1, sorted=True).indices


def gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    """x [N, S, ...] gathered at index [N, K] along dim 1 -> [N, K, ...]."""
    shape = index.shape + (1,) * (x.dim() - 2)
    return torch.gather(x, 1, index.view(shape).expand(-1, -1, *x.shape[2:]))


class SparseEncoder(DeformableEncoder):
    """The encoder with only the selected tokens as queries (same parameters as the dense one)."""

    def forward(self, src: Tensor, pos: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                ratios: Tensor, padding_mask: Tensor, topk_idx: Tensor | None = None,
                counts: Tensor | None = None, *, level_shapes: Sequence[tuple[int, int]]
                ) -> tuple[Tensor, list[Tensor]]:
        """As `DeformableEncoder.forward`, plus `topk_idx` [N, K] and `counts` [N] (k_i <= K).

        Returns the memory [N, S, C] (the first k_i selected tokens of image i updated by every
        layer, the rest unchanged) and each layer's selected-token output [N, K, C].
        """
        if topk_idx is None or counts is None:
            raise ValueError("SparseEncoder needs topk_idx "
                             "and counts (set MODEL.DETR.RHO > 0 so the transformer selects "
                             "tokens)")
        ref = encoder_reference_points(level_shapes, ratios)
        query = gather_tokens(src, topk_idx)
        query_pos = gather_tokens(pos, topk_idx)
        query_ref = gather_tokens(ref, topk_idx)
        keep = torch.arange(topk_idx.shape[1], device=src.device)[None] < counts[:, None]
        index = topk_idx[..., None].expand(-1, -1, src.shape[-1])
        intermediate = []
        for layer in self.layers:
            query = layer(query, query_pos, query_ref, src, spatial_shapes, level_start_index,
                          padding_mask, level_shapes)
            tokens = torch.where(keep[..., None], query, torch.gather(src, 1, index))
            src = src.scatter(1, index, tokens)
            intermediate.append(query)
        return src, intermediate
