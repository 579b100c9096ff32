"""Two-stage proposals: one box per encoder token, in logit space, with invalid ones masked."""
from __future__ import annotations

import torch
from torch import Tensor


def encoder_proposals(memory: Tensor, mask_flatten: Tensor, spatial_shapes: list[tuple[int, int]],
                      base_size: float = 0.05, margin: float = 0.01
                      ) -> tuple[Tensor, Tensor, Tensor]:
    """Proposals of every token and the memory with invalid tokens zeroed.

    A token of level l at grid cell (i, j) proposes the box centred at ((j + 0.5) / valid_W,
    (i + 0.5) / valid_H) with w = h = base_size * 2^l, i.e. relative to the unpadded image.
    Padded tokens and proposals with any coordinate outside (margin, 1 - margin) are invalid.

    Args:
        memory: [N, S, C] encoder tokens.
        mask_flatten: [N, S] bool, True on padded tokens.
        spatial_shapes: (H_l, W_l) per level, in token order.

    Returns:
        memory [N, S, C] with invalid tokens zeroed, proposals [N, S, 4] (cx, cy, w, h) as
        inverse sigmoid with invalid ones = +inf, and valid [N, S] bool.
    """
    n = memory.shape[0]
    proposals, start = [], 0
    for level, (h, w) in enumerate(spatial_shapes):
        mask_l = mask_flatten[:, start:start + h * w].view(n, h, w)
        valid_h = (~mask_l[:, :, 0]).sum(1).to(memory.dtype)
        valid_w = (~mask_l[:, 0, :]).sum(1).to(memory.dtype)
        grid_y, grid_x = torch.meshgrid(
            torch.arange(h, dtype=memory.dtype, device=memory.device),
            torch.arange(w, dtype=memory.dtype, device=memory.device), indexing="ij")
        grid = torch.stack([grid_x, grid_y], -1).view(1, h * w, 2) + 0.5
        centre = grid / torch.stack([valid_w, valid_h], -1).clamp(min=1)[:, None, :]
        wh = torch.full_like(centre, base_size * 2.0 ** level)
        proposals.append(torch.cat([centre, wh], -1))
        start += h * w
    proposals = torch.cat(proposals, 1)
    valid = ((proposals > margin) & (proposals < 1 - margin)).all(-1) & ~mask_flatten
    proposals = torch.log(proposals / (1 - proposals))
    proposals = proposals.masked_fill(~valid[..., None], float("inf"))
    memory = memory.masked_fill(~valid[..., None], 0.0)
    return memory, proposals, valid
