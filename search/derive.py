"""Genotype derivation from alphas, and the collapse check (edges where `none` dominates)."""
from __future__ import annotations

import torch
from torch import Tensor

from fad.nas.genotype import Genotype
from fad.nas.primitives import NONE, PRIMITIVES

NONE_INDEX = PRIMITIVES.index(NONE)


def derive_genotype(alphas: list[Tensor], edges_per_node: int = 2) -> Genotype:
    """Per node: each incoming edge's best non-`none` op by softmax weight; keep the strongest
    `edges_per_node` edges (strongest first) as (op_name, source). `alphas[i]`: Tensor[i + 2, 11].
    """
    normal = []
    for i, alpha in enumerate(alphas):
        if alpha.shape != (i + 2, len(PRIMITIVES)):
            raise ValueError(f"alphas of node {i} have shape {tuple(alpha.shape)}, expected "
                             f"({i + 2}, {len(PRIMITIVES)})")
        weights = alpha.detach().float().softmax(-1)
        weights[:, NONE_INDEX] = -1.0
        strength, best = weights.max(-1)
        order = torch.sort(strength, descending=True, stable=True).indices[:edges_per_node]
        normal.append([(PRIMITIVES[int(best[j])], int(j)) for j in order])
    return Genotype(normal, range(2, 2 + len(alphas)))


def none_dominated_edges(alphas: list[Tensor]) -> list[tuple[int, int, float]]:
    """(node, source, softmax weight of `none`) for every edge whose top weight is `none`."""
    found = []
    for i, alpha in enumerate(alphas):
        weights = alpha.detach().float().softmax(-1)
        for j in torch.nonzero(weights.argmax(-1) == NONE_INDEX).flatten().tolist():
            found.append((i, j, float(weights[j, NONE_INDEX])))
    return found


def softmax_alpha_scalars(tower: str, alphas: list[Tensor]) -> dict[str, float]:
    """Tensorboard scalars `alpha_<tower>/node<i>_src<j>/<op>` of the softmaxed alphas."""
    out = {}
    for i, alpha in enumerate(alphas):
        weights = alpha.detach().float().softmax(-1).cpu()
        for j in range(weights.shape[0]):
            for k, op in enumerate(PRIMITIVES):
                out[f"alpha_{tower}/node{i}_src{j}/{op}"] = float(weights[j, k])
    return out
