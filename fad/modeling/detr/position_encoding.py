"""Sine positional encodings of feature-map positions (encoder) and of boxes (two-stage queries)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _sine_features(coords: Tensor, num_feats: int, temperature: float) -> Tensor:
    """[..., K] coordinates (already scaled to radians) -> [..., K * num_feats].

    Each coordinate becomes `num_feats` values: sin on even, cos on odd frequency slots, with
    frequency temperature^(2 * (i // 2) / num_feats).
    """
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=coords.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    pos = coords[..., None] / dim_t  # [..., K, num_feats]
    pos = torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)
    return pos.flatten(-2)


class PositionEmbeddingSine(nn.Module):
    """Normalised sine encoding of (y, x) positions inside the valid (unpadded) image.

    `forward(mask [N, H, W] bool, True = padding)` -> [N, 2 * num_pos_feats, H, W]: the first
    half encodes y, the second x. Positions are cumulative counts of valid pixels minus `offset`,
    divided by the valid extent and multiplied by `scale`.
    """

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0,
                 scale: float = 2 * math.pi, offset: float = -0.5, eps: float = 1e-6):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = scale
        self.offset = offset
        self.eps = eps

    def forward(self, mask: Tensor) -> Tensor:
        not_mask = (~mask).float()
        y_embed = not_mask.cumsum(1)
        x_embed = not_mask.cumsum(2)
        y_embed = (y_embed + self.offset) / (y_embed[:, -1:, :] + self.eps) * self.scale
        x_embed = (x_embed + self.offset) / (x_embed[:, :, -1:] + self.eps) * self.scale
        yx = torch.stack((y_embed, x_embed), dim=-1)  # [N, H, W, 2]
        pos = _sine_features(yx, self.num_pos_feats, self.temperature)  # [N, H, W, 2 * F]
        return pos.permute(0, 3, 1, 2).contiguous()


def box_sine_embedding(boxes_unact: Tensor, num_pos_feats: int = 128,
                       temperature: float = 10000.0) -> Tensor:
    """Two-stage query embedding of proposals.

    `boxes_unact` [N, Q, 4] (cx, cy, w, h) logits -> [N, Q, 4 * num_pos_feats]: the sigmoid of
    each coordinate, times 2*pi, through the sine/cosine features.
    """
    return _sine_features(boxes_unact.sigmoid() * (2 * math.pi), num_pos_feats, temperature)
