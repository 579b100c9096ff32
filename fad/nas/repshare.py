"""RepShare: the candidates of one unit family computed from one shared chain.

chain x1 = A1(x), x2 = A2(x1), x3 = A3(x2); side branches D1(x1), D2(x2) (dilated separable
units); decouple 1x1s P, Q (no bias, no norm) on the emitted copies of x1 and x2 only. Output:
`[P(x1), D1(x1), Q(x2), D2(x2), x3]` — 3 units + 2 dilated units + 2 1x1s instead of the 9 units
+ 2 dilated units of the same five candidates computed separately (`SeparateCandidates`).
With `dil3` (as the reference), a dilation-3 separable unit D3 on x1 adds a sixth output, emitted
second: `[P(x1), D3(x1), D1(x1), Q(x2), D2(x2), x3]`.

Both modules also expose their candidates as `terms(x)`: (tensor, tail) pairs where the tail
is the candidate's last step still to run: its bias-free 1x1 (decouple P, Q) or the GroupNorm
of its last unit (then ReLU). `weighted_sum` folds each mixing
weight into that step: `w * P(x1)` = `conv1x1(x1, w * P)`, and, as a softmax weight is > 0,
`w * relu(GN(t))` = `relu(GN(t) with affine (w * gamma, w * beta))`, so no whole feature map is
scaled and the sum's backward is free; the supernet mixes with it. The 1x1-tailed terms of
an edge are one 1x1 over their concatenated inputs (`P1 x1 + Q1 x2 + P2 x1' + Q2 x2'` =
`[P1 Q1 P2 Q2] [x1; x2; x1'; x2']`), the GroupNorm-tailed terms one
`fad.ops.mix.gn_relu_sum` (on the CPU a compiled kernel: the GroupNorms, ReLUs and the sum in
one pass over each term, and one op in autograd). What depends only on the weights and
parameters (`fold`) is the same at every FPN level: the supernet makes it once per forward.
"""
from __future__ import annotations

from itertools import islice
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fad.ops.mix import gn_relu_sum

from .pointwise import Pointwise, conv1x1
from .primitives import conv_unit, dil_unit

Tail = "nn.Conv2d | nn.GroupNorm"
Term = tuple[Tensor, Tail]


def _pending(unit: nn.Sequential, x: Tensor) -> Term:
    """A unit (..., GroupNorm, ReLU) run on `x` up to its GroupNorm: (GN input, the GN)."""
    for layer in islice(unit, len(unit) - 2):
        x = layer(x)
    return x, unit[-2]


class Fold(NamedTuple):
    """The part of an edge's weighted sum that depends only on the weights and the tails'
    parameters, so is the same at every FPN level: `pointwise` the 1x1-tailed terms' weights
    times their w_k, concatenated over input channels in term order (Tensor[C, K1 * C, 1, 1]),
    and `scale`, `shift` the GroupNorm-tailed terms' affines times their w_k (Tensor[K, C]);
    None where an edge has no such term."""

    pointwise: Tensor | None
    scale: Tensor | None
    shift: Tensor | None


def fold(tails: list[Tail], weights: Tensor) -> Fold:
    """The `Fold` of the terms whose tails are `tails`, weights Tensor[len(tails)] (>= 0)."""
    pointwise, norms, norm_weights = [], [], []
    for tail, w in zip(tails, weights):
        if isinstance(tail, nn.GroupNorm):
            norms.append(tail)
            norm_weights.append(w)
        else:
            pointwise.append(tail.weight * w)
    folded_1x1 = torch.cat(pointwise, 1) if pointwise else None
    if not norms:
        return Fold(folded_1x1, None, None)
    if len({(gn.num_groups, gn.eps) for gn in norms}) > 1:
        raise ValueError("the GroupNorm-tailed candidates of an edge differ in groups or eps")
    w = torch.stack(norm_weights).unsqueeze(1)  # views: no host-made index
    return Fold(folded_1x1, torch.stack([gn.weight for gn in norms]) * w,
                torch.stack([gn.bias for gn in norms]) * w)


def weighted_sum(terms: list[Term], folded: Fold) -> Tensor:
    """`sum_k w_k * out_k` of the candidates' terms (tensors Tensor[N, C, H, W]) whose
    `fold(tails, w)` is `folded` (w Tensor[len(terms)], each >= 0: softmax weights, as the fold
    into a ReLU needs).

    The 1x1-tailed terms are summed by one 1x1 over their concatenated inputs (`pointwise`);
    the GroupNorm-tailed ones (one shared GroupNorm layout) are added to that sum by one
    `gn_relu_sum` (a compiled kernel on the CPU).
    """
    inputs = [t for t, tail in terms if not isinstance(tail, nn.GroupNorm)]
    base = None
    if inputs:
        base = conv1x1(torch.cat(inputs, 1) if len(inputs) > 1 else inputs[0], folded.pointwise)
    norm_terms = [(t, tail) for t, tail in terms if isinstance(tail, nn.GroupNorm)]
    if not norm_terms:
        return base
    gn = norm_terms[0][1]
    return gn_relu_sum([t for t, _ in norm_terms], folded.scale, folded.shift, gn.num_groups,
                       gn.eps, base)


def _outputs(terms: list[Term]) -> list[Tensor]:
    """The candidates' outputs (unweighted) from their terms."""
    outs = []
    for t, tail in terms:
        outs.append(F.relu(tail(t), inplace=True) if isinstance(tail, nn.GroupNorm) else tail(t))
    return outs


def _side_branches(channels: int, dil3: bool) -> nn.ModuleList:
    """D1, D2 (dilation 2), and D3 (dilation 3, on x1) when `dil3`."""
    return nn.ModuleList(dil_unit(channels, d) for d in ((2, 2, 3) if dil3 else (2, 2)))


class RepShare(nn.Module):
    """`forward(x: Tensor[N, C, H, W]) -> list of 5 (6 with dil3) Tensor[N, C, H, W]` in
    primitive order."""

    def __init__(self, family: str, channels: int, dil3: bool = False):
        super().__init__()
        self.chain = nn.ModuleList(conv_unit(family, channels) for _ in range(3))
        self.dilated = _side_branches(channels, dil3)
        self.decouple = nn.ModuleList(Pointwise(channels, channels, bias=False)
                                      for _ in range(2))

    def terms(self, x: Tensor) -> list[Term]:
        """The candidates as (tensor, tail), in primitive order."""
        x1 = self.chain[0](x)
        x2 = self.chain[1](x1)
        dil3 = [_pending(d3, x1) for d3 in self.dilated[2:]]
        return [(x1, self.decouple[0]), *dil3, _pending(self.dilated[0], x1),
                (x2, self.decouple[1]), _pending(self.dilated[1], x2), _pending(self.chain[2], x2)]

    def forward(self, x: Tensor) -> list[Tensor]:
        return _outputs(self.terms(x))


class SeparateCandidates(nn.Module):
    """The same candidates as `RepShare`, each an independent op with its own weights.

    The reference to check sharing against (tests, `fad.cli.bench.supernet`); `tie_to` copies a
    RepShare's weights so both compute identical outputs.
    """

    def __init__(self, family: str, channels: int, dil3: bool = False):
        super().__init__()

        def chain(n: int) -> list[nn.Module]:
            return [conv_unit(family, channels) for _ in range(n)]

        def one_by_one() -> nn.Module:
            return Pointwise(channels, channels, bias=False)

        dil3_ops = [nn.Sequential(*chain(1), dil_unit(channels, 3))] if dil3 else []
        self.ops = nn.ModuleList([
            nn.Sequential(*chain(1), one_by_one()),
            *dil3_ops,
            nn.Sequential(*chain(1), dil_unit(channels)),
            nn.Sequential(*chain(2), one_by_one()),
            nn.Sequential(*chain(2), dil_unit(channels)),
            nn.Sequential(*chain(3)),
        ])

    def terms(self, x: Tensor) -> list[Term]:
        """The candidates as (tensor, tail), in primitive order."""
        terms = []
        for op in self.ops:
            last = op[-1]
            if isinstance(last, nn.Conv2d) and last.kernel_size == (1, 1) and last.bias is None:
                terms.append((op[:-1](x), last))
            else:
                terms.append(_pending(op[-1], op[:-1](x)))
        return terms

    def forward(self, x: Tensor) -> list[Tensor]:
        return _outputs(self.terms(x))

    def tie_to(self, shared: RepShare) -> None:
        """Copy `shared`'s weights into every candidate that uses them."""
        a, d, p = shared.chain, shared.dilated, shared.decouple
        dil3 = [[a[0], d3] for d3 in d[2:]]
        layouts = [[a[0], p[0]], *dil3, [a[0], d[0]], [a[0], a[1], p[1]], [a[0], a[1], d[1]],
                   [a[0], a[1], a[2]]]
        for op, modules in zip(self.ops, layouts):
            for mine, theirs in zip(op, modules):
                mine.load_state_dict(theirs.state_dict())
