"""RelationBlock: anchors -> supervised proposals + query content for the one-layer decoder."""
from __future__ import annotations

from torch import Tensor, nn

from fad.modeling.layers import prior_bias
from fad.modeling.set_prediction import normalize_xyxy

from .blocks import IoFSelfAttention, branch, ffn
from .boxes import refine_xyzr, xyxy_to_xyzr, xyzr_to_xyxy
from .pooling import multiscale_roi_align


def xavier_init(module: nn.Module) -> None:
    """Xavier-uniform on every parameter of `module` with more than one dimension."""
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class RelationBlock(nn.Module):
    """Turn anchors into proposals (supervised) and query features.

    Multi-scale RoIAlign 7x7 (sampling ratio 2) over P2-P5 -> flatten channel-major ->
    Linear(C*49 -> D) + LayerNorm -> IoF-biased self-attention over the anchors' xyzr (stride-4
    units) -> FFN (D -> ffn_dim -> D, residual, LayerNorm) -> class branch (1 layer) + logits,
    regression branch (3 layers) + xyzr deltas; xy += dxy * 2^z, zr += dzr.

    `forward(features, boxes, image_sizes, attn_mask)`:
    - features: P2-P5 [B, C, H_l, W_l] (strides `strides`);
    - boxes: [B, Q, 4] xyxy anchors in input pixels (padded batch coordinates);
    - image_sizes: [B, 2] (h, w) of each unpadded image;
    - attn_mask: [B, Q, Q] bool, True = blocked (`padding_attention_mask`, or the denoising mask).
    Returns a dict: `logits` [B, Q, num_classes], `boxes` [B, Q, 4] proposals as cxcywh fractions
    of the unpadded image, `content` [B, Q, D], `xyzr` [B, Q, 4] refined boxes (stride-4 units,
    detached: the AdaMixer heads' input).
    """

    def __init__(self, num_classes: int, dim: int = 256, num_heads: int = 8, ffn_dim: int = 2048,
                 in_channels: int = 256, strides: tuple[int, ...] = (4, 8, 16, 32),
                 roi_size: int = 7, sampling_ratio: int = 2):
        super().__init__()
        self.strides = list(strides)
        self.roi_size = roi_size
        self.sampling_ratio = sampling_ratio
        self.roi_proj = nn.Linear(in_channels * roi_size * roi_size, dim)
        self.roi_norm = nn.LayerNorm(dim)
        self.self_attn = IoFSelfAttention(dim, num_heads)
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

    def forward(self, features: list[Tensor], boxes: Tensor, image_sizes: Tensor,
                attn_mask: Tensor | None = None) -> dict[str, Tensor]:
        batch, num_queries = boxes.shape[:2]
        boxes = boxes.detach()
        rois = multiscale_roi_align(features, boxes, self.strides, self.roi_size,
                                    self.sampling_ratio)  # [B * Q, C, 7, 7]
        content = self.roi_norm(self.roi_proj(rois.reshape(batch, num_queries, -1)))
        xyzr = xyxy_to_xyzr(boxes, self.strides[0])
        content = self.self_attn(content, xyzr, attn_mask)
        content = self.ffn_norm(content + self.ffn(content))
        logits = self.cls_logits(self.cls_branch(content))
        xyzr = refine_xyzr(xyzr, self.box_delta(self.reg_branch(content)))
        proposals = normalize_xyxy(xyzr_to_xyxy(xyzr, self.strides[0]), image_sizes[:, None])
        return {"logits": logits, "boxes": proposals, "content": content,
                "xyzr": xyzr.detach()}
