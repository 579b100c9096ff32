"""The supernet: mixed edges over the RepShare candidates, search cells and search towers.

Mixed edge (11 weights in `PRIMITIVES` order; 13 in `PRIMITIVES_DIL3` order with `dil3`):
`expand(sum_k w_k * out_k(squeeze(x)))` where the candidates come from one RepShare op per
family and `none` contributes zero. squeeze 1x1 (T -> C) and expand 1x1 (C -> T) have no bias,
as in the reference's search cells, so an edge whose weight sits on `none` outputs zero (the
augment edges add biases, as the reference's augment cells do).
Search cell: inputs s0, s1 (adapted to width T), node i sums one mixed edge from each of its i+2
predecessors, output = concat of the nodes (Tensor[N, num_nodes * T, H, W]).
A search tower owns its alphas: one Tensor[i + 2, 11 or 13] per node, shared by all its cells.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fad.modeling.fcos.per_forward import once
from fad.nas.batched import stacked
from fad.nas.pointwise import Pointwise, conv1x1
from fad.nas.primitives import FAMILIES, preprocess, primitives
from fad.nas.repshare import RepShare, SeparateCandidates, fold, weighted_sum


class MixedEdge(nn.Module):
    """`forward(x: Tensor[N, T, H, W], weights: Tensor[11 or 13]) -> Tensor[N, T, H, W]`.

    `shared=False` computes the candidates as separate ops (benchmark reference only).
    """

    def __init__(self, tower_channels: int, edge_channels: int, shared: bool = True,
                 dil3: bool = False):
        super().__init__()
        self.squeeze = Pointwise(tower_channels, edge_channels, bias=False)
        op = RepShare if shared else SeparateCandidates
        self.families = nn.ModuleList(op(family, edge_channels, dil3) for family in FAMILIES)
        self.expand = Pointwise(edge_channels, tower_channels, bias=False)

    def mix(self, h: Tensor, weights: Tensor) -> Tensor:
        """`sum_k w_k * out_k(h)` at the edge width: h Tensor[N, C, H, W] (squeezed input),
        weights Tensor[11 or 13] (`mix_edges` of this edge alone)."""
        return mix_edges([self], h, weights.unsqueeze(0))

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        return self.expand(self.mix(self.squeeze(x), weights))


def mix_edges(edges: list[MixedEdge], h: Tensor, weights: Tensor) -> Tensor:
    """Each edge's `sum_k w_ek * out_ek(h_e)` at the edge width, the E edges run together
    (`fad.nas.batched`): h = [h_0 | ... | h_{E-1}] Tensor[N, E * C, H, W] (their squeezed
    inputs), weights Tensor[E, 11 or 13] -> Tensor[N, E * C, H, W], edge e's sum in channels
    [e * C, (e + 1) * C). The last weight (`none`) multiplies zeros and is skipped. The weights'
    `fold` is made once per head forward (`per_forward.once`: at the first level)."""
    first, peers = edges[0], edges[1:]
    terms = [term for k, family in enumerate(first.families)
             for term in family.terms(h, [e.families[k] for e in peers])]
    w = weights[:, :-1]
    return weighted_sum(terms, once(tuple(edges),
                                    lambda: fold([tails for _, tails in terms], w)))


class SearchCell(nn.Module):
    """`forward(s0, s1, weights: list[Tensor[i + 2, 11 or 13]]) -> Tensor[N, num_nodes * T, H, W]`.

    Computes exactly `node_i = sum_j edge_ij(state_j, weights[i][j])`, with the edge 1x1s batched:
    one squeeze conv per state for all the edges that read it (the two inputs together when they
    are the same tensor, as in the box tower), a node's edges mixed together (`mix_edges`: one
    op per layer for all i + 2 edges) and one expand conv per node over the concatenated mixed
    features of its edges (no per-edge expand or T-wide sums).
    """

    def __init__(self, num_nodes: int, in_channels: tuple[int, int], tower_channels: int,
                 edge_channels: int, shared: bool = True, dil3: bool = False):
        super().__init__()
        t = tower_channels
        self.pre0, self.pre1 = preprocess(in_channels[0], t), preprocess(in_channels[1], t)
        self.edges = nn.ModuleList(MixedEdge(t, edge_channels, shared, dil3)
                                   for i in range(num_nodes) for _ in range(i + 2))
        self.num_nodes = num_nodes
        self.out_channels = num_nodes * t

    def _edge(self, node: int, source: int) -> MixedEdge:
        return self.edges[node * (node + 3) // 2 + source]  # offset of node i = sum_{k<i}(k + 2)

    def _squeeze(self, x: Tensor, sources: list[int], squeezed: dict) -> None:
        """Squeeze `x` for every edge reading one of `sources` in one conv; fill `squeezed`."""
        keys = [(i, j) for j in sources for i in range(max(j - 1, 0), self.num_nodes)]
        if not keys:
            return
        weight = stacked([self._edge(i, j).squeeze for i, j in keys], "weight")
        for key, h in zip(keys, conv1x1(x, weight).chunk(len(keys), 1)):
            squeezed[key] = h

    def forward(self, s0: Tensor, s1: Tensor, weights: list[Tensor]) -> Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        squeezed: dict[tuple[int, int], Tensor] = {}
        if states[0] is states[1]:
            self._squeeze(states[0], [0, 1], squeezed)
        else:
            self._squeeze(states[0], [0], squeezed)
            self._squeeze(states[1], [1], squeezed)
        for i, w in enumerate(weights):
            edges = [self._edge(i, j) for j in range(i + 2)]
            h = torch.cat([squeezed.pop((i, j)) for j in range(i + 2)], 1)
            expand = stacked([e.expand for e in edges], "weight", dim=1)
            states.append(conv1x1(mix_edges(edges, h, w), expand))
            self._squeeze(states[-1], [i + 2], squeezed)
        return torch.cat(states[2:], 1)


class SearchTower(nn.Module):
    """`num_cells` search cells sharing the tower's alphas; `forward(s0, s1)` as in augment."""

    def __init__(self, num_cells: int, num_nodes: int, in_channels: tuple[int, int],
                 tower_channels: int, edge_channels: int, alpha_init_std: float = 1e-3,
                 shared: bool = True, dil3: bool = False):
        super().__init__()
        num_ops = len(primitives(dil3))
        self.alphas = nn.ParameterList(
            nn.Parameter(alpha_init_std * torch.randn(i + 2, num_ops)) for i in range(num_nodes))
        self.cells = nn.ModuleList()
        c0, c1 = in_channels
        for _ in range(num_cells):
            cell = SearchCell(num_nodes, (c0, c1), tower_channels, edge_channels, shared, dil3)
            self.cells.append(cell)
            c0, c1 = c1, cell.out_channels
        self.out_channels = c1

    def forward(self, s0: Tensor, s1: Tensor) -> Tensor:
        weights = once(self, lambda: [a.softmax(-1) for a in self.alphas])
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, weights)
        return s1
