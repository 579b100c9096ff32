"""What the DETR transformer hands the detector: `TransformerOutputs` (with the two-stage
proposals and Sparse DETR's selected tokens as their own parts). N images, S encoder tokens
(all levels), K selected tokens, Q queries, D decoder layers, C channels."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class TwoStageProposals:
    """The encoder's proposals, one per token (two-stage only)."""

    logits: Tensor
    """[N, S, C'] class logits (C' = the classes, or 1 for the binary objectness)."""
    boxes: Tensor
    """[N, S, 4] (cx, cy, w, h) fractions of the unpadded image (sigmoid of the refined
    proposals)."""
    valid: Tensor
    """[N, S] bool: not padding and inside the image margin; only these are trained."""


@dataclass
class SparseTokens:
    """Sparse DETR's token selection and what the encoder did with the selected tokens."""

    scores: Tensor
    """[N, S] scoring-network logits of every token (padding filled with the minimum)."""
    index: Tensor
    """[N, K] the selected tokens, best first; image i uses the first `counts[i]`."""
    counts: Tensor
    """[N] k_i, the tokens selected in image i (K = `token_budget` >= every k_i)."""
    layer_outputs: list[Tensor]
    """Per encoder layer, its output at the selected tokens [N, K, C]."""
    proposals: Tensor
    """[N, K, 4] the two-stage proposals of the selected tokens, in logit space."""
    valid: Tensor
    """[N, K] bool: among the first k_i of the image and a valid proposal."""


@dataclass
class TransformerOutputs:
    """Every output of `DeformableTransformer.forward`."""

    hs: Tensor
    """[D, N, Q, C] the output of every decoder layer."""
    init_reference: Tensor
    """[N, Q, 2|4] references of the first decoder layer: points (single-stage) or boxes
    (two-stage), sigmoid (cx, cy[, w, h])."""
    references: Tensor
    """[D, N, Q, 2|4] the references each layer passes on (refined with box refinement, the
    input ones otherwise); see `layer_reference`."""
    padding_mask: Tensor
    """[N, S] bool, True on padded tokens."""
    spatial_shapes: Tensor
    """[L, 2] int64 (H_l, W_l) of every level."""
    level_start_index: Tensor
    """[L] int64 the first token of every level."""
    level_shapes: list[tuple[int, int]]
    """(H_l, W_l) of every level as Python ints (`spatial_shapes` on the host, no sync)."""
    sampling: tuple[Tensor, Tensor] | None = None
    """The decoder's cross-attention sampling locations [D, N, Q, M, L, P, 2] and attention
    weights [D, N, Q, M, L, P] when asked for (the DAM), else None."""
    proposals: TwoStageProposals | None = None
    """Two-stage only."""
    sparse: SparseTokens | None = None
    """Sparse DETR only."""

    def layer_reference(self, layer: int) -> Tensor:
        """[N, Q, 2|4] the reference that decoder layer `layer`'s box deltas refine: the initial
        one for layer 0, the one layer - 1 passed on for the others."""
        return self.init_reference if layer == 0 else self.references[layer - 1]
