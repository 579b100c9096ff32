"""Prediction heads: class Linear + box MLP per decoder layer, two-stage and encoder-aux heads."""
from __future__ import annotations

import copy

import torch.nn.functional as F
from torch import Tensor, nn

from fad.modeling.layers import prior_bias


class MLP(nn.Module):
    """`num_layers` Linear layers with ReLU in between: [..., in_dim] -> [..., out_dim]."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


def _class_head(d_model: int, num_classes: int, prior_prob: float = 0.01) -> nn.Linear:
    """Linear [..., d_model] -> [..., num_classes] logits, bias = the focal prior bias."""
    head = nn.Linear(d_model, num_classes)
    nn.init.constant_(head.bias, prior_bias(prior_prob))
    return head


def _box_head(d_model: int) -> MLP:
    """Box-delta MLP whose last layer (weight and bias) starts at zero."""
    head = MLP(d_model, d_model, 4, 3)
    nn.init.zeros_(head.layers[-1].weight)
    nn.init.zeros_(head.layers[-1].bias)
    return head


def _copies(head: nn.Module, n: int) -> nn.ModuleList:
    """`n` independent copies of `head`, all with its current weights."""
    return nn.ModuleList(copy.deepcopy(head) for _ in range(n))


class DetrHeads(nn.Module):
    """Every prediction head of the detector, in one place.

    - `class_embed[i]`, `bbox_embed[i]` for decoder layer i: independent copies with box
      refinement, one shared pair otherwise (use `cls(i)` / `box(i)`). Boxes are deltas in logit
      space added to the inverse sigmoid of the reference.
    - two-stage: `enc_class`, `enc_bbox` score and refine one proposal per encoder token.
    - Sparse DETR encoder aux loss: `enc_aux_class[l]`, `enc_aux_bbox[l]` for encoder layer l
      (all but the last).
    Init, as the reference code: every class head is a copy of one Linear (bias -log(99), prior
    0.01) and every box head a copy of one MLP (last layer zero), so the encoder heads start as
    copies of the decoder's. The (w, h) bias is -2 (sigmoid ~ 0.12) only where the reference is
    a point (single-stage, the first decoder layer's head); 0 where it is a box already (later
    layers with refinement, two-stage, encoder heads).
    """

    def __init__(self, d_model: int, num_classes: int, num_decoder_layers: int,
                 with_box_refine: bool, two_stage: bool, num_enc_aux: int = 0):
        super().__init__()
        cls, box = _class_head(d_model, num_classes), _box_head(d_model)
        copies = num_decoder_layers if with_box_refine else 1
        self.with_box_refine = with_box_refine
        self.class_embed, self.bbox_embed = _copies(cls, copies), _copies(box, copies)
        if two_stage:
            self.enc_class, self.enc_bbox = copy.deepcopy(cls), copy.deepcopy(box)
        else:
            nn.init.constant_(self.bbox_embed[0].layers[-1].bias[2:], -2.0)
        self.enc_aux_class, self.enc_aux_bbox = _copies(cls, num_enc_aux), _copies(box, num_enc_aux)

    def cls(self, layer: int) -> nn.Module:
        """Class head of decoder layer `layer`."""
        return self.class_embed[layer if self.with_box_refine else 0]

    def box(self, layer: int) -> nn.Module:
        """Box-delta head of decoder layer `layer`."""
        return self.bbox_embed[layer if self.with_box_refine else 0]
