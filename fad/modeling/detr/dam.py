"""Sparse DETR's decoder cross-attention map (DAM): the scoring network's training target.

Every decoder sampling point spreads its attention weight bilinearly onto the (up to) four
tokens around it on its level; summed over layers, queries, heads and points this gives one
value per encoder token. The top-k_i tokens of image i are the positives of a binary target.

Coordinates follow the MSDA kernel: a normalised location x maps to pixel x * W - 0.5
(half-pixel centres), so the DAM credits exactly the tokens the attention read. The reference
implementation omits the -0.5 shift; `half_pixel=False` reproduces it.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def attention_to_token_map(locations: Tensor, weights: Tensor,
                           level_shapes: Sequence[tuple[int, int]], half_pixel: bool = True
                           ) -> Tensor:
    """Scatter sampling weights onto tokens.

    Args:
        locations: [N, ..., L, P, 2] (x, y) in [0, 1] over each level's padded map.
        weights: [N, ..., L, P] attention weights of those points.
        level_shapes: (H_l, W_l) per level, Python ints (levels back to back in the tokens).

    Returns:
        [N, S] float: for each token, the sum of w * (1 - |dx|) * (1 - |dy|) over the points
        whose bilinear footprint covers it; corners outside the map are dropped.
    """
    n, num_levels, num_points = weights.shape[0], weights.shape[-2], weights.shape[-1]
    locs = locations.reshape(n, -1, num_levels, num_points, 2).float()
    w_all = weights.reshape(n, -1, num_levels, num_points).float()
    total = sum(h * w for h, w in level_shapes)
    out = torch.zeros(n, total, dtype=torch.float32, device=weights.device)
    shift = 0.5 if half_pixel else 0.0
    start = 0
    for level, (h, w) in enumerate(level_shapes):
        x = locs[:, :, level, :, 0].reshape(n, -1) * w - shift
        y = locs[:, :, level, :, 1].reshape(n, -1) * h - shift
        wt = w_all[:, :, level].reshape(n, -1)
        x0, y0 = x.floor(), y.floor()
        fx, fy = x - x0, y - y0
        for cx, cy, cw in ((x0, y0, (1 - fx) * (1 - fy)), (x0 + 1, y0, fx * (1 - fy)),
                           (x0, y0 + 1, (1 - fx) * fy), (x0 + 1, y0 + 1, fx * fy)):
            inside = (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
            index = (cy.clamp(0, h - 1) * w + cx.clamp(0, w - 1)).long()
            out.scatter_add_(1, index + start, wt * cw * inside)
        start += h * w
    return out


@torch.no_grad()
def dam_target(dam: Tensor, padding_mask: Tensor, counts: Tensor, k: int) -> Tensor:
    """[N, S] DAM -> [N, S] float target: 1 on the top counts[i] valid tokens of image i;
    `k` >= every counts[i] (`token_budget`, known on the host)."""
    ranked = dam.masked_fill(padding_mask, dam.min() - 1)
    top = ranked.topk(k, dim=1, sorted=True).indices
    keep = torch.arange(top.shape[1], device=dam.device)[None] < counts[:, None]
    return torch.zeros_like(dam).scatter(1, top, keep.to(dam.dtype))


def dam_loss(scores: Tensor, target: Tensor, padding_mask: Tensor) -> Tensor:
    """Multilabel soft-margin loss: BCE with logits averaged over each image's valid tokens,
    then over images. scores, target [N, S]; padding_mask [N, S] bool."""
    valid = (~padding_mask).to(scores.dtype)
    bce = F.binary_cross_entropy_with_logits(scores, target, reduction="none") * valid
    return (bce.sum(1) / valid.sum(1).clamp(min=1)).mean()


@torch.no_grad()
def token_coverage(dam: Tensor, token_idx: Tensor, counts: Tensor) -> Tensor:
    """`corr`: share of the DAM mass on the encoder's selected tokens, averaged over images
    (a 0-dim tensor on the device, read when it is logged).

    dam [N, S]; token_idx [N, K] (best first); counts [N] = k_i.
    """
    keep = torch.arange(token_idx.shape[1], device=dam.device)[None] < counts[:, None]
    covered = (torch.gather(dam, 1, token_idx) * keep).sum(1)
    return (covered / dam.sum(1).clamp(min=1e-12)).mean()
