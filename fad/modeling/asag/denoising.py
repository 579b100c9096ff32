"""Optional denoising (DN) queries of ASAG-A-dn: noised ground-truth boxes put in front of the
anchors, with an attention mask that keeps the two sets (and the DN groups) apart."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_convert

from fad.modeling.set_prediction import values_like


def dn_noise_scale(epoch: int, fixed: float | None = None) -> float:
    """Box noise scale of 0-based `epoch`: 0.8 - 0.04 * epoch, or `fixed` when given."""
    return fixed if fixed is not None else 0.8 - 0.04 * epoch


@dataclass
class DenoisingQueries:
    """Queries of a training batch with DN slots in front.

    boxes [B, N + Q, 4] xyxy pixels (N = num_dn noised GT copies / whole-image boxes, then the
    anchors); attn_mask [B, N + Q, N + Q] bool, True = blocked; targets: per image the clean DN
    targets (`boxes` [r * T, 4] cxcywh fractions, `labels` [r * T]) of the first r * T slots;
    num_dn: N.
    """

    boxes: Tensor
    attn_mask: Tensor
    targets: list[dict]
    num_dn: int


def dn_attention_mask(valid: Tensor, num_dn: int, group_sizes: list[int]) -> Tensor:
    """[B, N + Q, N + Q] bool mask, True = blocked.

    `valid` [B, Q] marks the real anchors; `group_sizes[b]` is image b's GT count T (its DN
    slots form groups of T; the slots after the last whole group form one more group; T = 0
    makes all slots one group). Anchors never see DN slots; a DN slot sees only its own group
    and the anchors; no query but a padded anchor sees a padded anchor; padded anchors see every
    anchor.
    """
    batch, num_queries = valid.shape
    size = num_dn + num_queries
    slots = torch.arange(num_dn, device=valid.device)
    masks = []
    for b in range(batch):
        n = group_sizes[b]
        whole = num_dn // n * n if n else 0
        group = torch.where(slots < whole, slots // max(n, 1), whole // max(n, 1))
        mask = torch.zeros(size, size, dtype=torch.bool, device=valid.device)
        mask[:num_dn, :num_dn] = group[:, None] != group[None, :]
        mask[num_dn:, :num_dn] = True
        padded = torch.cat([torch.zeros_like(slots, dtype=torch.bool), ~valid[b]])
        mask |= ~padded[:, None] & padded[None, :]
        masks.append(mask)
    return torch.stack(masks)


def prepare_denoising(targets: list[dict], boxes: Tensor, valid: Tensor, image_sizes: Tensor,
                      num_dn: int = 200, noise_scale: float = 0.4,
                      generator: torch.Generator | None = None) -> DenoisingQueries:
    """Put `num_dn` DN queries in front of the anchors `boxes` [B, Q, 4] (xyxy pixels).

    Image b's T GT boxes (targets: `boxes` [T, 4] cxcywh fractions, `labels` [T]) are repeated
    r = floor(num_dn / T) times; each copy gets box noise only: (cx, cy) += u * (w, h) / 2 and
    (w, h) += u * (w, h), u ~ U(-1, 1) * noise_scale, then clamped to [0, 1]. The remaining
    num_dn - r * T slots are whole-image boxes. `valid` [B, Q]; `image_sizes` [B, 2] (h, w).
    """
    device, dtype = boxes.device, boxes.dtype
    dn_boxes, dn_targets = [], []
    for b, tgt in enumerate(targets):
        whwh = image_sizes[b].flip(0).repeat(2).to(device=device, dtype=dtype)  # (w, h, w, h)
        gt = tgt["boxes"].to(device=device, dtype=dtype)
        repeats = num_dn // len(gt) if len(gt) else 0
        clean = gt.repeat(repeats, 1)
        dn_targets.append({"boxes": clean, "labels": tgt["labels"].repeat(repeats)})
        noised = clean
        if noise_scale > 0 and len(clean):
            wh = clean[:, 2:]
            spread = torch.cat([wh / 2, wh], 1)
            u = torch.rand(clean.shape, generator=generator, device=device, dtype=dtype) * 2 - 1
            noised = (clean + u * spread * noise_scale).clamp(0.0, 1.0)
        whole = values_like([0.5, 0.5, 1.0, 1.0], boxes)[None]
        cxcywh = torch.cat([noised, whole.expand(num_dn - len(clean), 4)]) * whwh
        dn_boxes.append(box_convert(cxcywh, "cxcywh", "xyxy"))
    all_boxes = torch.cat([torch.stack(dn_boxes), boxes], 1)
    mask = dn_attention_mask(valid, num_dn, [len(t["boxes"]) for t in targets])
    return DenoisingQueries(all_boxes, mask, dn_targets, num_dn)
