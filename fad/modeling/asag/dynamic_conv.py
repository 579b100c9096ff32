"""SparseRCNN one-layer decoder head (ASAG-S): self-attention, DynamicConv on RoI features, FFN,
class and box-delta heads."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fad.modeling.layers import prior_bias
from fad.modeling.set_prediction import denormalize_cxcywh, values_like

from .blocks import branch, ffn
from .pooling import multiscale_roi_align
from .relation import xavier_init

SCALE_CLAMP = math.log(100000.0 / 16)


def apply_box_deltas(deltas: Tensor, boxes: Tensor,
                     weights: tuple[float, float, float, float] = (2.0, 2.0, 1.0, 1.0)
                     ) -> Tensor:
    """Apply deltas [..., 4] to cxcywh boxes [..., 4] (any units, here image fractions).

    cx += dx / wx * w, cy += dy / wy * h, w *= exp(dw / ww), h *= exp(dh / wh), with dw, dh
    clamped at log(100000 / 16).
    """
    d = deltas / values_like(weights, deltas)
    dwh = d[..., 2:].clamp(max=SCALE_CLAMP)
    xy = boxes[..., :2] + d[..., :2] * boxes[..., 2:]
    return torch.cat([xy, boxes[..., 2:] * dwh.exp()], -1)


class DynamicConv(nn.Module):
    """Two query-generated 1x1 "convolutions" over the 49 RoI positions.

    A Linear(D -> 2 * C * d) gives per query W1 [C, d] and W2 [d, C]; roi @ W1, LayerNorm(d),
    ReLU; @ W2, LayerNorm(C), ReLU; flatten position-major ([49, C] -> 49 * C) ->
    Linear(49 * C -> D), LayerNorm, ReLU.

    `forward(query [N, D], roi [N, 49, C])` -> [N, D].
    """

    def __init__(self, dim: int = 256, dynamic_dim: int = 64, roi_size: int = 7):
        super().__init__()
        self.dim = dim
        self.dynamic_dim = dynamic_dim
        self.param_generator = nn.Linear(dim, 2 * dim * dynamic_dim)
        self.norm1 = nn.LayerNorm(dynamic_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.out_proj = nn.Linear(dim * roi_size * roi_size, dim)
        self.out_norm = nn.LayerNorm(dim)

    def forward(self, query: Tensor, roi: Tensor) -> Tensor:
        params = self.param_generator(query)
        num = self.dim * self.dynamic_dim
        w1 = params[:, :num].view(-1, self.dim, self.dynamic_dim)
        w2 = params[:, num:].view(-1, self.dynamic_dim, self.dim)
        x = torch.relu(self.norm1(torch.bmm(roi, w1)))
        x = torch.relu(self.norm2(torch.bmm(x, w2)))
        return torch.relu(self.out_norm(self.out_proj(x.flatten(1))))


class SparseRcnnHead(nn.Module):
    """One SparseRCNN decoder layer with its prediction heads.

    content -> self-attention (no positional term; residual, LayerNorm) -> DynamicConv on the
    7x7 RoIAlign of the input boxes over P2-P5 (residual, LayerNorm) -> FFN (residual,
    LayerNorm) -> class branch (1 layer) + logits, regression branch (3 layers) + deltas
    weighted (2, 2, 1, 1) on the normalised cxcywh input box. Init: xavier on matrices, class
    bias -log(99), zero box deltas.

    `forward(features, boxes, content, image_sizes, attn_mask)`: features P2-P5
    [B, C, H_l, W_l]; boxes [B, Q, 4] cxcywh fractions of the unpadded image (detached
    proposals); content [B, Q, D]; image_sizes [B, 2] (h, w); attn_mask [B, Q, Q] bool
    (True = blocked) or None. Returns `logits` [B, Q, num_classes], `boxes` [B, Q, 4] cxcywh
    fractions, `content` [B, Q, D].
    """

    def __init__(self, num_classes: int, dim: int = 256, num_heads: int = 8,
                 ffn_dim: int = 2048, dynamic_dim: int = 64,
                 strides: tuple[int, ...] = (4, 8, 16, 32), roi_size: int = 7,
                 sampling_ratio: int = 2):
        super().__init__()
        self.strides = list(strides)
        self.num_heads = num_heads
        self.roi_size = roi_size
        self.sampling_ratio = sampling_ratio
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.attn_norm = nn.LayerNorm(dim)
        self.dynamic_conv = DynamicConv(dim, dynamic_dim, roi_size)
        self.conv_norm = nn.LayerNorm(dim)
        self.ffn = ffn(dim, ffn_dim)
        self.ffn_norm = nn.LayerNorm(dim)
        self.cls_branch = branch(dim, 1)
        self.cls_logits = nn.Linear(dim, num_classes)
        self.reg_branch = branch(dim, 3)
        self.box_delta = nn.Linear(dim, 4)
        xavier_init(self)
        nn.init.constant_(self.cls_logits.bias, prior_bias(0.01))
        nn.init.zeros_(self.box_delta.weight)
        nn.init.zeros_(self.box_delta.bias)

    def forward(self, features: list[Tensor], boxes: Tensor, content: Tensor,
                image_sizes: Tensor, attn_mask: Tensor | None = None) -> dict[str, Tensor]:
        batch, num_queries, dim = content.shape
        pixels = denormalize_cxcywh(boxes, image_sizes[:, None])
        rois = multiscale_roi_align(features, pixels, self.strides, self.roi_size,
                                    self.sampling_ratio)  # [B * Q, C, 7, 7]
        rois = rois.flatten(2).transpose(1, 2)  # [B * Q, 49, C]
        mask = None
        if attn_mask is not None:
            mask = attn_mask.repeat_interleave(self.num_heads, 0)
        attended = self.self_attn(content, content, content, attn_mask=mask,
                                  need_weights=False)[0]
        content = self.attn_norm(content + attended)
        flat = content.reshape(batch * num_queries, dim)
        flat = self.conv_norm(flat + self.dynamic_conv(flat, rois))
        content = self.ffn_norm(flat + self.ffn(flat)).view(batch, num_queries, dim)
        logits = self.cls_logits(self.cls_branch(content))
        boxes = apply_box_deltas(self.box_delta(self.reg_branch(content)), boxes)
        return {"logits": logits, "boxes": boxes, "content": content}
