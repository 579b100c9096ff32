"""AdaMixer one-layer decoder head: IoF-biased self-attention, adaptive 3D sampling, adaptive
channel + spatial mixing, FFN, class and xyzr heads."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fad.modeling.layers import prior_bias
from fad.modeling.set_prediction import normalize_xyxy, values_like

from .blocks import IoFSelfAttention, branch, ffn
from .boxes import refine_xyzr, xyzr_to_wh, xyzr_to_xyxy
from .relation import xavier_init


def make_sample_points(offsets: Tensor, xyzr: Tensor, groups: int, points: int) -> Tensor:
    """Sampling points of each query in (x, y, level) space.

    `offsets` [B, Q, groups * points * 3] (group-major, then point, then (dx, dy, dz)); `xyzr`
    [B, Q, 4] (stride-4 units). x, y = centre + (dx, dy) * (w, h); z = box z + dz.
    Returns [B, Q, groups, points, 3].
    """
    batch, num_queries = xyzr.shape[:2]
    offsets = offsets.view(batch, num_queries, groups, points, 3)
    wh = xyzr_to_wh(xyzr)[:, :, None, None, :]
    xy = xyzr[:, :, None, None, :2] + offsets[..., :2] * wh
    z = xyzr[:, :, None, None, 2:3] + offsets[..., 2:3]
    return torch.cat([xy, z], -1)


def level_weights(z: Tensor, num_levels: int, tau: float = 2.0) -> Tensor:
    """[...] sampling-point z -> [..., num_levels] softmax over l of -(z - l)^2 / tau."""
    grid = torch.arange(num_levels, device=z.device, dtype=z.dtype)
    return torch.softmax(-(z[..., None] - grid).pow(2) / tau, -1)


def sample_3d(points: Tensor, features: list[Tensor], strides: list[int], tau: float = 2.0
              ) -> Tensor:
    """Bilinear sampling of every level at each point, weighted by `level_weights`.

    `points` [B, Q, G, P, 3] (x, y in units of strides[0]; z the level coordinate, 0 = P2);
    `features` [B, C, H_l, W_l]; channels are split group-major into G groups of C / G. Each
    level is sampled with grid_sample (bilinear, zero padding, align_corners False) at
    xy / (padded feature size * stride). Returns [B, Q, G, P, C / G].
    """
    batch, num_queries, groups, num_points = points.shape[:4]
    channels = features[0].shape[1] // groups
    xy = points[..., :2] * strides[0]
    weights = level_weights(points[..., 2], len(features), tau)  # [B, Q, G, P, L]
    out = points.new_zeros(batch, num_queries, groups, num_points, channels)
    for level, (feature, stride) in enumerate(zip(features, strides)):
        height, width = feature.shape[-2:]
        size = values_like([width * stride, height * stride], xy)
        grid = (xy / size * 2 - 1).permute(0, 2, 1, 3, 4).flatten(0, 1)  # [B*G, Q, P, 2]
        value = feature.reshape(batch * groups, channels, height, width)
        sampled = F.grid_sample(value, grid.to(value.dtype), mode="bilinear",
                                padding_mode="zeros", align_corners=False)  # [B*G, C', Q, P]
        w = weights[..., level].permute(0, 2, 1, 3).flatten(0, 1)[:, None]  # [B*G, 1, Q, P]
        sampled = (sampled * w).view(batch, groups, channels, num_queries, num_points)
        out = out + sampled.permute(0, 3, 1, 4, 2)
    return out


class AdaptiveMixing(nn.Module):
    """Query-conditioned channel then spatial mixing of the sampled points.

    A Linear(D -> G * (C'^2 + P_out * P_in)) (zero weight, default bias) gives per query and
    group a channel matrix [C', C'] and a spatial matrix [P_out, P_in]. x @ M, LayerNorm over
    (P_in, C') without affine, GELU; S @ x, LayerNorm over (P_out, C'), GELU; flatten
    (group, point, channel) -> Linear(G * P_out * C' -> D); added to the query.

    `forward(sampled [B, Q, G, P_in, C'], query [B, Q, D])` -> [B, Q, D].
    """

    def __init__(self, dim: int = 256, in_channels: int = 256, groups: int = 4,
                 in_points: int = 32, out_points: int = 128):
        super().__init__()
        self.groups = groups
        self.channels = in_channels // groups
        self.in_points = in_points
        self.out_points = out_points
        per_group = self.channels * self.channels + out_points * in_points
        self.param_generator = nn.Linear(dim, groups * per_group)
        self.out_proj = nn.Linear(groups * out_points * self.channels, dim)

    def reset_parameters(self) -> None:
        """Zero weight of the parameter generator (its bias keeps the default init)."""
        nn.init.zeros_(self.param_generator.weight)

    def forward(self, sampled: Tensor, query: Tensor) -> Tensor:
        batch, num_queries = query.shape[:2]
        c, groups = self.channels, self.groups
        params = self.param_generator(query).reshape(batch * num_queries, groups, -1)
        channel_mix, spatial_mix = params.split([c * c, self.out_points * self.in_points], -1)
        channel_mix = channel_mix.reshape(batch * num_queries, groups, c, c)
        spatial_mix = spatial_mix.reshape(batch * num_queries, groups, self.out_points,
                                          self.in_points)
        x = sampled.reshape(batch * num_queries, groups, self.in_points, c)
        x = torch.matmul(x, channel_mix)
        x = F.gelu(F.layer_norm(x, x.shape[-2:]))
        x = torch.matmul(spatial_mix, x)
        x = F.gelu(F.layer_norm(x, x.shape[-2:]))
        return query + self.out_proj(x.reshape(batch, num_queries, -1))


class AdaMixerHead(nn.Module):
    """One AdaMixer decoder layer with its prediction heads (ASAG-A).

    content -> IoF self-attention (+ sine xyzr encoding) -> offsets Linear(D -> G * P_in * 3)
    -> 3D sampling of P2-P5 -> adaptive mixing -> LayerNorm -> FFN (residual, LayerNorm) ->
    class branch (1 layer) + logits, regression branch (3 layers) + xyzr deltas.
    Init: xavier on matrices; class bias -log(99); zero box deltas; offset generator zero weight
    with bias dx, dy ~ U(-0.5, 0.5) and dz = -1; mixing parameter generator zero weight.

    `forward(features, xyzr, content, image_sizes, attn_mask)`: features P2-P5
    [B, C, H_l, W_l]; xyzr [B, Q, 4] (stride-4 units, detached); content [B, Q, D];
    image_sizes [B, 2] (h, w) unpadded; attn_mask [B, Q, Q] bool (True = blocked) or None.
    Returns `logits` [B, Q, num_classes], `boxes` [B, Q, 4] cxcywh fractions of the unpadded
    image, `xyzr` [B, Q, 4] refined, `content` [B, Q, D].
    """

    def __init__(self, num_classes: int, dim: int = 256, num_heads: int = 8,
                 ffn_dim: int = 2048, in_channels: int = 256, groups: int = 4,
                 in_points: int = 32, out_points: int = 128,
                 strides: tuple[int, ...] = (4, 8, 16, 32)):
        super().__init__()
        self.strides = list(strides)
        self.groups = groups
        self.in_points = in_points
        self.self_attn = IoFSelfAttention(dim, num_heads)
        self.offset_generator = nn.Linear(dim, groups * in_points * 3)
        self.mixing = AdaptiveMixing(dim, in_channels, groups, in_points, out_points)
        self.mixing_norm = nn.LayerNorm(dim)
        self.ffn = ffn(dim, ffn_dim)
        self.ffn_norm = nn.LayerNorm(dim)
        self.cls_branch = branch(dim, 1)
        self.cls_logits = nn.Linear(dim, num_classes)
        self.reg_branch = branch(dim, 3)
        self.box_delta = nn.Linear(dim, 4)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The reference's init (see the class docstring)."""
        xavier_init(self)
        nn.init.constant_(self.cls_logits.bias, prior_bias(0.01))
        nn.init.zeros_(self.box_delta.weight)
        nn.init.zeros_(self.box_delta.bias)
        nn.init.uniform_(self.self_attn.iof_tau, 0.0, 4.0)
        nn.init.zeros_(self.offset_generator.weight)
        bias = self.offset_generator.bias.view(self.groups, self.in_points, 3)
        nn.init.uniform_(bias, -0.5, 0.5)
        bias[..., 2] = -1.0
        self.mixing.reset_parameters()

    def forward(self, features: list[Tensor], xyzr: Tensor, content: Tensor,
                image_sizes: Tensor, attn_mask: Tensor | None = None) -> dict[str, Tensor]:
        content = self.self_attn(content, xyzr, attn_mask)
        points = make_sample_points(self.offset_generator(content), xyzr, self.groups,
                                    self.in_points)
        sampled = sample_3d(points, features, self.strides)
        content = self.mixing_norm(self.mixing(sampled, content))
        content = self.ffn_norm(content + self.ffn(content))
        logits = self.cls_logits(self.cls_branch(content))
        xyzr = refine_xyzr(xyzr, self.box_delta(self.reg_branch(content)))
        boxes = normalize_xyxy(xyzr_to_xyxy(xyzr, self.strides[0]), image_sizes[:, None])
        return {"logits": logits, "boxes": boxes, "xyzr": xyzr, "content": content}
