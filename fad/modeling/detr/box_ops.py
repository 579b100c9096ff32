"""Box refinement in logit space, shared by the DETR decoder and detector (the conversions
shared with ASAG are in `fad.modeling.set_prediction.boxes`)."""
from __future__ import annotations

import torch
from torch import Tensor


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """log(x / (1 - x)) with x clamped to [0, 1] and both terms to >= eps (any shape)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def refine_boxes(delta: Tensor, reference: Tensor) -> Tensor:
    """Box refinement, sigmoid(delta + inverse_sigmoid(reference)), as (cx, cy, w, h) [..., 4].

    `delta` [..., 4] in logit space; `reference` [..., 4] boxes, or [..., 2] points (then only
    the centre gets the reference and (w, h) = sigmoid(delta[..., 2:])).
    """
    ref = inverse_sigmoid(reference)
    if ref.shape[-1] == 4:
        return (delta + ref).sigmoid()
    return torch.cat([delta[..., :2] + ref, delta[..., 2:]], -1).sigmoid()

