"""Parallel one-layer decoder heads (AdaMixer or SparseRCNN) with stage embeddings and the
`used_head` choice made at evaluation."""
from __future__ import annotations

import re

from torch import Tensor, nn

from .adamixer import AdaMixerHead
from .dynamic_conv import SparseRcnnHead

DECODERS = ("adamixer", "sparsercnn")


def used_head_index(used_head: str, num_heads: int) -> int:
    """`main` -> the last head (3 of four), `aux_k` -> head k (k < num_heads - 1)."""
    if used_head == "main":
        return num_heads - 1
    match = re.fullmatch(r"aux_(\d+)", used_head)
    if match is None or int(match.group(1)) >= num_heads - 1:
        choices = ["main"] + [f"aux_{k}" for k in range(num_heads - 1)]
        raise ValueError(f"used_head {used_head!r} does not fit {num_heads} heads; choose one "
                         f"of {', '.join(choices)}")
    return int(match.group(1))


class DecoderHeads(nn.Module):
    """`num_decoder_heads` independent one-layer heads that all read the RelationBlock output.

    Head k gets the query content plus its stage embedding (nn.Embedding(num_decoder_heads, D),
    N(0, 1) init) and the RelationBlock's boxes (AdaMixer: its detached xyzr; SparseRCNN: its
    detached normalised proposals). Heads are not chained. In training every head runs; in eval
    only the head chosen by `used_head` (`main` = the last head, `aux_k` = head k).

    `forward(features, proposals, image_sizes, attn_mask)`: features P2-P5 [B, C, H_l, W_l];
    proposals = the RelationBlock's output dict (`content` [B, Q, D], `xyzr` [B, Q, 4], `boxes`
    [B, Q, 4]); image_sizes [B, 2] (h, w); attn_mask [B, Q, Q] bool or None. Returns
    {head index: head output dict (`logits` [B, Q, num_classes], `boxes` [B, Q, 4] cxcywh
    fractions, ...)} for the heads that ran.
    """

    def __init__(self, num_classes: int, decoder: str = "adamixer", num_decoder_heads: int = 4,
                 used_head: str = "main", dim: int = 256, **head_kwargs):
        super().__init__()
        if decoder not in DECODERS:
            raise ValueError(f"DecoderHeads: unknown decoder {decoder!r}; choose one of "
                             f"{', '.join(DECODERS)}")
        if num_decoder_heads < 1:
            raise ValueError(f"DecoderHeads: num_decoder_heads must be >= 1, got "
                             f"{num_decoder_heads}")
        self.decoder = decoder
        self.used_index = used_head_index(used_head, num_decoder_heads)
        head_cls = AdaMixerHead if decoder == "adamixer" else SparseRcnnHead
        self.stage_embedding = nn.Embedding(num_decoder_heads, dim)
        self.heads = nn.ModuleList(head_cls(num_classes, dim=dim, **head_kwargs)
                                   for _ in range(num_decoder_heads))

    def forward(self, features: list[Tensor], proposals: dict[str, Tensor], image_sizes: Tensor,
                attn_mask: Tensor | None = None) -> dict[int, dict[str, Tensor]]:
        indices = range(len(self.heads)) if self.training else [self.used_index]
        if self.decoder == "adamixer":
            boxes = proposals["xyzr"].detach()
        else:
            boxes = proposals["boxes"].detach()
        outputs = {}
        for k in indices:
            content = proposals["content"] + self.stage_embedding.weight[k]
            outputs[k] = self.heads[k](features, boxes, content, image_sizes, attn_mask)
        return outputs
