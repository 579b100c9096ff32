"""Building blocks shared by the RelationBlock and the AdaMixer heads: the sine encoding of xyzr
boxes, the attention mask of padded queries, IoF-biased self-attention, FFN and the class /
regression branches."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fad.modeling.set_prediction import values_like

from .boxes import box_iof, xyzr_to_xyxy


def sine_xyzr_encoding(xyzr: Tensor, num_feats: int = 64, temperature: float = 10000.0
                       ) -> Tensor:
    """[B, Q, 4] xyzr -> [B, Q, 4 * num_feats] sine encoding.

    x and y are divided by 1000 (z, r as they are); each coordinate gets `num_feats` features
    v / temperature^(2 * floor(i / 2) / num_feats), sine at even i and cosine at odd i
    (interleaved), coordinates in the order x, y, z, r.
    """
    scale = values_like([1000.0, 1000.0, 1.0, 1.0], xyzr)
    i = torch.arange(num_feats, dtype=torch.float32, device=xyzr.device)
    dim_t = temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / num_feats)
    pos = (xyzr / scale)[..., None] / dim_t  # [B, Q, 4, F]
    pos = torch.stack([pos[..., 0::2].sin(), pos[..., 1::2].cos()], -1)  # [B, Q, 4, F/2, 2]
    return pos.flatten(2)


def padding_attention_mask(valid: Tensor) -> Tensor:
    """[B, Q] bool (False = padding query) -> [B, Q, Q] bool attention mask, True = blocked.

    Valid queries never attend to padded ones; padded queries attend to every query, so no row
    is fully blocked (no NaN) even when a whole image is padding.
    """
    return valid[:, :, None] & ~valid[:, None, :]


def branch(dim: int, num_layers: int) -> nn.Sequential:
    """`num_layers` x (Linear without bias, LayerNorm, GELU): [..., dim] -> [..., dim]."""
    layers: list[nn.Module] = []
    for _ in range(num_layers):
        layers += [nn.Linear(dim, dim, bias=False), nn.LayerNorm(dim), nn.GELU()]
    return nn.Sequential(*layers)


def ffn(dim: int, hidden_dim: int) -> nn.Sequential:
    """Linear(dim, hidden_dim), GELU, Linear(hidden_dim, dim)."""
    return nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, dim))


class IoFSelfAttention(nn.Module):
    """Self-attention among queries biased by box overlap, with the sine box encoding.

    q = k = v = content + enc(xyzr); logits get log(IoF + 1e-7) * tau_h (IoF of the query's box
    with the key's box over the query's own area; tau per head, init U(0, 4)); blocked pairs
    get -inf. Output = LayerNorm(attention + content + enc(xyzr)).

    `forward(content [B, Q, D], xyzr [B, Q, 4] (no gradient needed), attn_mask [B, Q, Q] bool
    or None)` -> [B, Q, D].
    """

    def __init__(self, dim: int = 256, num_heads: int = 8):
        super().__init__()
        self.num_heads = num_heads
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.iof_tau = nn.Parameter(torch.empty(num_heads))
        self.norm = nn.LayerNorm(dim)
        nn.init.uniform_(self.iof_tau, 0.0, 4.0)

    def forward(self, content: Tensor, xyzr: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        batch, num_queries, dim = content.shape
        with torch.no_grad():
            boxes = xyzr_to_xyxy(xyzr, 1.0)
            log_iof = (box_iof(boxes, boxes) + 1e-7).log()[:, None]  # [B, 1, Q, Q]
            pos = sine_xyzr_encoding(xyzr, dim // 4)
        bias = log_iof * self.iof_tau.view(1, -1, 1, 1)  # [B, H, Q, Q]
        if attn_mask is not None:
            bias = bias.masked_fill(attn_mask[:, None], float("-inf"))
        bias = bias.reshape(batch * self.num_heads, num_queries, num_queries)
        x = content + pos
        out = self.attn(x, x, x, attn_mask=bias, need_weights=False)[0]
        return self.norm(out + x)
