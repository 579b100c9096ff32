"""RepShare: the five candidates of one unit family computed from one shared chain.

chain x1 = A1(x), x2 = A2(x1), x3 = A3(x2); side branches D1(x1), D2(x2) (dilated separable
units); decouple 1x1s P, Q (no bias, no norm) on the emitted copies of x1 and x2 only. Output:
`[P(x1), D1(x1), Q(x2), D2(x2), x3]` — 3 units + 2 dilated units + 2 1x1s instead of the 9 units
+ 2 dilated units of the same five candidates computed separately (`SeparateCandidates`).
"""
from __future__ import annotations

from torch import Tensor, nn

from .primitives import conv_unit, dil_unit


class RepShare(nn.Module):
    """`forward(x: Tensor[N, C, H, W]) -> list of 5 Tensor[N, C, H, W]` in primitive order."""

    def __init__(self, family: str, channels: int):
        super().__init__()
        self.chain = nn.ModuleList(conv_unit(family, channels) for _ in range(3))
        self.dilated = nn.ModuleList(dil_unit(channels) for _ in range(2))
        self.decouple = nn.ModuleList(nn.Conv2d(channels, channels, 1, bias=False) for _ in range(2))

    def forward(self, x: Tensor) -> list[Tensor]:
        x1 = self.chain[0](x)
        x2 = self.chain[1](x1)
        x3 = self.chain[2](x2)
        return [self.decouple[0](x1), self.dilated[0](x1), self.decouple[1](x2),
                self.dilated[1](x2), x3]


class SeparateCandidates(nn.Module):
    """The same five candidates as `RepShare`, each an independent op with its own weights.

    The reference to check sharing against (tests, `tools/bench/supernet.py`); `tie_to` copies a
    RepShare's weights so both compute identical outputs.
    """

    def __init__(self, family: str, channels: int):
        super().__init__()

        def chain(n: int) -> list[nn.Module]:
            return [conv_unit(family, channels) for _ in range(n)]

        def one_by_one() -> nn.Module:
            return nn.Conv2d(channels, channels, 1, bias=False)

        self.ops = nn.ModuleList([
            nn.Sequential(*chain(1), one_by_one()),
            nn.Sequential(*chain(1), dil_unit(channels)),
            nn.Sequential(*chain(2), one_by_one()),
            nn.Sequential(*chain(2), dil_unit(channels)),
            nn.Sequential(*chain(3)),
        ])

    def forward(self, x: Tensor) -> list[Tensor]:
        return [op(x) for op in self.ops]

    def tie_to(self, shared: RepShare) -> None:
        """Copy `shared`'s weights into every candidate that uses them."""
        a, d, p = shared.chain, shared.dilated, shared.decouple
        layouts = [[a[0], p[0]], [a[0], d[0]], [a[0], a[1], p[1]], [a[0], a[1], d[1]],
                   [a[0], a[1], a[2]]]
        for op, modules in zip(self.ops, layouts):
            for mine, theirs in zip(op, modules):
                mine.load_state_dict(theirs.state_dict())
