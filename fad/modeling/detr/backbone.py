"""ResNet body + per-level input projection to the transformer width (with padding masks)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from yacs.config import CfgNode

from fad.modeling.backbone import build_backbone_body
from fad.modeling.layers import group_norm

_BODY_OUTPUTS = ("c3", "c4", "c5")  # strides 8, 16, 32


def build_body(cfg: CfgNode) -> tuple[nn.Module, list[int]]:
    """The backbone body (forward -> dict with c3..c5) and the channels of c3, c4, c5."""
    body, channels = build_backbone_body(cfg)
    return body, [channels[k] for k in _BODY_OUTPUTS]


def _conv_gn(in_ch: int, out_ch: int, groups: int, kernel: int, stride: int) -> nn.Sequential:
    """Conv (xavier, zero bias) + GroupNorm with `groups` groups under the one GN rule of
    `fad.modeling.layers` (>= 2 channels per group): [N, in_ch, H, W] -> [N, out_ch, H', W']."""
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2)
    nn.init.xavier_uniform_(conv.weight, gain=1)
    nn.init.zeros_(conv.bias)
    return nn.Sequential(conv, group_norm(out_ch, max_groups=groups))


class MultiLevelBackbone(nn.Module):
    """Body -> `num_levels` maps of width `d_model`, each with its padding mask.

    The first levels are the last min(num_levels, 3) of C3..C5 through 1x1 conv + GN; each
    further level is a 3x3 stride-2 conv + GN, the first on raw C5, later ones on the level
    before. `forward(images [N, 3, H, W], mask [N, H, W] bool, True = padding)` ->
    list of (features [N, d_model, H_l, W_l], mask [N, H_l, W_l]) from fine to coarse.
    """

    def __init__(self, body: nn.Module, channels: list[int], d_model: int, num_levels: int,
                 gn_groups: int = 32):
        super().__init__()
        if d_model % gn_groups:
            raise ValueError(f"MultiLevelBackbone: d_model {d_model} is not divisible by "
                             f"gn_groups {gn_groups}")
        self.body = body
        num_body = min(num_levels, len(channels))
        self.body_keys = list(_BODY_OUTPUTS[len(channels) - num_body:])
        body_channels = channels[len(channels) - num_body:]
        projs = [_conv_gn(c, d_model, gn_groups, 1, 1) for c in body_channels]
        in_ch = channels[-1]
        for _ in range(num_levels - num_body):
            projs.append(_conv_gn(in_ch, d_model, gn_groups, 3, 2))
            in_ch = d_model
        self.input_proj = nn.ModuleList(projs)

    def forward(self, images: Tensor, mask: Tensor) -> list[tuple[Tensor, Tensor]]:
        feats = self.body(images)
        maps = [feats[k] for k in self.body_keys]
        srcs = [proj(x) for proj, x in zip(self.input_proj, maps)]
        extra = feats[_BODY_OUTPUTS[-1]]
        for proj in self.input_proj[len(maps):]:
            extra = proj(extra)
            srcs.append(extra)
        out = []
        for src in srcs:
            m = F.interpolate(mask[None].float(), size=src.shape[-2:], mode="nearest")[0].bool()
            out.append((src, m))
        return out
