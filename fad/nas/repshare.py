"""RepShare: the candidates of one unit family computed from one shared chain.

chain x1 = A1(x), x2 = A2(x1), x3 = A3(x2); side branches D1(x1), D2(x2) (dilated separable
units); decouple 1x1s P, Q (no bias, no norm) on the emitted copies of x1 and x2 only. Output:
`[P(x1), D1(x1), Q(x2), D2(x2), x3]` — 3 units + 2 dilated units + 2 1x1s instead of the 9 units
+ 2 dilated units of the same five candidates computed separately (`SeparateCandidates`).
With `dil3` (as the reference), a dilation-3 separable unit D3 on x1 adds a sixth output, emitted
second: `[P(x1), D3(x1), D1(x1), Q(x2), D2(x2), x3]`.

Both modules also expose their candidates as `terms(x)`: (tensor, tails) pairs where the tail
is the candidate's last step still to run: its bias-free 1x1 (decouple P, Q) or the GroupNorm
of its last unit (then ReLU). `terms(x, peers)` runs the op together with `peers` (ops of the
same structure: the other mixed edges of a search node) on their inputs concatenated over
channels (`fad.nas.batched`): each tensor then holds the E ops' candidates side by side and the
tails are the E ops' modules. `weighted_sum` folds each mixing
weight into that step: `w * P(x1)` = `conv1x1(x1, w * P)`, and, as a softmax weight is > 0,
`w * relu(GN(t))` = `relu(GN(t) with affine (w * gamma, w * beta))`, so no whole feature map is
scaled and the sum's backward is free; the supernet mixes with it. The 1x1-tailed terms of
an edge are one 1x1 over their concatenated inputs (`P1 x1 + Q1 x2 + P2 x1' + Q2 x2'` =
`[P1 Q1 P2 Q2] [x1; x2; x1'; x2']`; for E ops one grouped 1x1), the GroupNorm-tailed terms one
`fad.ops.mix.gn_relu_sum` (on the CPU a compiled kernel: the GroupNorms, ReLUs and the sum in
one pass over each term, and one op in autograd). What depends only on the weights and
parameters (`fold`) is the same at every FPN level: the supernet makes it once per forward.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fad.ops.mix import gn_relu_sum

from .batched import run
from .pointwise import Pointwise, conv1x1
from .primitives import conv_unit, dil_unit

Tails = "tuple[nn.Conv2d, ...] | tuple[nn.GroupNorm, ...]"  # one per op run together
Term = tuple[Tensor, Tails]


def _pending(units: Sequence[nn.Sequential], x: Tensor) -> Term:
    """Units (..., GroupNorm, ReLU) run together on `x` up to their GroupNorms: (GN input, the
    GNs)."""
    return run(units, x, stop=-2), tuple(u[-2] for u in units)


class Fold(NamedTuple):
    """The part of E edges' weighted sums that depends only on the weights and the tails'
    parameters, so is the same at every FPN level: `pointwise` the 1x1-tailed terms' weights
    times their w_ek as one grouped 1x1 (groups = E; group e's input channels are its K1 terms'
    in term order: Tensor[E * C, K1 * C, 1, 1]), and `scale`, `shift` the GroupNorm-tailed terms'
    affines times their w_ek, the E edges side by side (Tensor[K, E * C]); None where the
    edges have no such term."""

    pointwise: Tensor | None
    scale: Tensor | None
    shift: Tensor | None


def fold(tails: list[Tails], weights: Tensor) -> Fold:
    """The `Fold` of the terms whose tails are `tails` (each the E edges' modules), weights
    Tensor[E, len(tails)] (>= 0)."""
    is_norm = [isinstance(t[0], nn.GroupNorm) for t in tails]

    def columns(norm: bool) -> Tensor:  # stacked column views: no host-made index tensor
        return torch.stack([weights[:, k] for k, n in enumerate(is_norm) if n == norm], 1)
    pointwise = [torch.stack([m.weight for m in t]) for t, n in zip(tails, is_norm) if not n]
    folded_1x1 = None
    if pointwise:
        p = torch.stack(pointwise, 1) * columns(False)[..., None, None, None, None]
        e, k1, c = p.shape[:3]
        folded_1x1 = p.transpose(1, 2).reshape(e * c, k1 * c, 1, 1)
    norms = [t for t, n in zip(tails, is_norm) if n]
    if not norms:
        return Fold(folded_1x1, None, None)
    if len({(gn.num_groups, gn.eps) for t in norms for gn in t}) > 1:
        raise ValueError("the GroupNorm-tailed candidates of an edge differ in groups or eps")
    w = columns(True).t().unsqueeze(2)  # [K, E, 1]

    def affine(name: str) -> Tensor:
        return (torch.stack([torch.stack([getattr(gn, name) for gn in t]) for t in norms])
                * w).flatten(1)
    return Fold(folded_1x1, affine("weight"), affine("bias"))


def weighted_sum(terms: list[Term], folded: Fold) -> Tensor:
    """`sum_k w_ek * out_ek` of E edges' candidates: terms' tensors Tensor[N, E * C, H, W] (the
    edges side by side), `fold(tails, w)` = `folded` (w Tensor[E, len(terms)], each >= 0:
    softmax weights, as the fold into a ReLU needs) -> Tensor[N, E * C, H, W].

    The 1x1-tailed terms are summed by one grouped 1x1 over their inputs interleaved per edge
    (`pointwise`); the GroupNorm-tailed ones (one shared GroupNorm layout) are added to that sum
    by one `gn_relu_sum` (a compiled kernel on the CPU) with E times the groups.
    """
    edges = len(terms[0][1])
    inputs = [t.unflatten(1, (edges, -1)) for t, tails in terms
              if not isinstance(tails[0], nn.GroupNorm)]
    base = None
    if inputs:
        x = torch.stack(inputs, 2).flatten(1, 3) if len(inputs) > 1 else inputs[0].flatten(1, 2)
        base = conv1x1(x, folded.pointwise, groups=edges)
    norm_terms = [(t, tails) for t, tails in terms if isinstance(tails[0], nn.GroupNorm)]
    if not norm_terms:
        return base
    gn = norm_terms[0][1][0]
    return gn_relu_sum([t for t, _ in norm_terms], folded.scale, folded.shift,
                       edges * gn.num_groups, gn.eps, base)


def _outputs(terms: list[Term]) -> list[Tensor]:
    """The candidates' outputs (unweighted) from their terms."""
    outs = []
    for t, tails in terms:
        y = run(tails, t)
        outs.append(F.relu(y, inplace=True) if isinstance(tails[0], nn.GroupNorm) else y)
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

    def terms(self, x: Tensor, peers: Sequence[RepShare] = ()) -> list[Term]:
        """The candidates as (tensor, tails), in primitive order: of this op on x
        Tensor[N, C, H, W], or of it and `peers` run together on their E inputs concatenated
        over channels (Tensor[N, E * C, H, W]; module docstring)."""
        ops = (self, *peers)

        def each(name: str, k: int) -> tuple[nn.Module, ...]:
            return tuple(getattr(op, name)[k] for op in ops)
        x1 = run(each("chain", 0), x)
        x2 = run(each("chain", 1), x1)
        dil3 = [_pending(each("dilated", k), x1) for k in range(2, len(self.dilated))]
        return [(x1, each("decouple", 0)), *dil3, _pending(each("dilated", 0), x1),
                (x2, each("decouple", 1)), _pending(each("dilated", 1), x2),
                _pending(each("chain", 2), x2)]

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

    def terms(self, x: Tensor, peers: Sequence[SeparateCandidates] = ()) -> list[Term]:
        """The candidates as (tensor, tails), in primitive order, alone or with `peers` (as
        `RepShare.terms`)."""
        terms = []
        for k in range(len(self.ops)):
            ops = tuple(peer.ops[k] for peer in (self, *peers))
            y, last = run(ops, x, stop=-1), tuple(o[-1] for o in ops)
            if isinstance(last[0], Pointwise) and last[0].bias is None:
                terms.append((y, last))
            else:
                terms.append(_pending(last, y))
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
