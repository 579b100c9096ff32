"""Augment cells and towers rebuilt from a genotype (discrete ops, no decouple 1x1s).

Each chosen `(op, j)` of node i is an `augment_edge`, `1x1 (T -> C) -> discrete op at width C ->
1x1 (C -> T)`, applied to state j (0 = s0, 1 = s1, j >= 2 = node j-2); the two 1x1s carry a bias,
no norm and no activation, as in the reference's augment cells (the supernet's are bias-free, see
`fad.search.cells`). A node sums its edges; the cell output concatenates the nodes of
`normal_concat` (Tensor[N, 3T, H, W] for 3 nodes). Inputs whose width is not T first go through
1x1 (bias) + GN + ReLU. The search's cost model (`fad.nas.flops`, `fad.search.cost`) counts these
very modules, so a change here changes its cost tables with it.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fad.nas.genotype import Genotype
from fad.nas.primitives import discrete_op, preprocess


def augment_edge(op: str, tower_channels: int, edge_channels: int) -> nn.Sequential:
    """One augment edge: `Tensor[N, T, H, W] -> Tensor[N, T, H, W]`, 1x1 (T -> C, bias), the
    discrete op `op` at width C, 1x1 (C -> T, bias)."""
    return nn.Sequential(nn.Conv2d(tower_channels, edge_channels, 1),
                         discrete_op(op, edge_channels),
                         nn.Conv2d(edge_channels, tower_channels, 1))


class AugmentCell(nn.Module):
    """`forward(s0, s1) -> Tensor[N, len(normal_concat) * T, H, W]`."""

    def __init__(self, genotype: Genotype, in_channels: tuple[int, int], tower_channels: int,
                 edge_channels: int):
        super().__init__()
        t, c = tower_channels, edge_channels
        self.pre0, self.pre1 = preprocess(in_channels[0], t), preprocess(in_channels[1], t)
        self.edges = nn.ModuleList()
        self.sources: list[list[int]] = []
        for node in genotype.normal:
            self.sources.append([src for _, src in node])
            for op, _ in node:
                self.edges.append(augment_edge(op, t, c))
        self.concat = list(genotype.normal_concat)
        self.out_channels = len(self.concat) * t

    def forward(self, s0: Tensor, s1: Tensor) -> Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        edges = iter(self.edges)
        for sources in self.sources:
            states.append(sum(next(edges)(states[j]) for j in sources))
        return torch.cat([states[i] for i in self.concat], 1)


class AugmentTower(nn.Module):
    """`num_cells` cells with one genotype; cell k > 0 reads (s0, s1) <- (s1, previous output)."""

    def __init__(self, genotype: Genotype, num_cells: int, in_channels: tuple[int, int],
                 tower_channels: int, edge_channels: int):
        super().__init__()
        self.cells = nn.ModuleList()
        c0, c1 = in_channels
        for _ in range(num_cells):
            cell = AugmentCell(genotype, (c0, c1), tower_channels, edge_channels)
            self.cells.append(cell)
            c0, c1 = c1, cell.out_channels
        self.out_channels = c1

    def forward(self, s0: Tensor, s1: Tensor) -> Tensor:
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return s1
