"""Genotype derivation from alphas, and the collapse check (edges where `none` dominates)."""
from __future__ import annotations

import torch
from torch import Tensor

from fad.nas.genotype import Genotype
from fad.nas.primitives import primitives_for

NONE_INDEX = -1  # `none` is the last column of every primitive list


def derive_genotype(alphas: list[Tensor], edges_per_node: int = 2) -> Genotype:
    """Per node: each incoming edge's best non-`none` op by softmax weight; keep the strongest
    `edges_per_node` edges (strongest first) as (op_name, source).
    `alphas[i]`: Tensor[i + 2, 11] (Tensor[i + 2, 13] for the dilation-3 variant).
    """
    normal = []
    for i, alpha in enumerate(alphas):
        ops = primitives_for(alpha.shape[-1])
        if alpha.shape != (i + 2, len(ops)):
            raise ValueError(f"alphas of node {i} have shape {tuple(alpha.shape)}, expected "
                             f"({i + 2}, {len(ops)})")
        weights = alpha.detach().float().softmax(-1)
        weights[:, NONE_INDEX] = -1.0
        strength, best = weights.max(-1)
        order = torch.sort(strength, descending=True, stable=True).indices[:edges_per_node]
        normal.append([(ops[int(best[j])], int(j)) for j in order])
    return Genotype(normal, range(2, 2 + len(alphas)))


def none_dominated_edges(alphas: list[Tensor], lead: float = 1.0) -> list[tuple[int, int, float]]:
    """(node, source, softmax weight of `none`) for every edge whose top weight is `none`, with
    at least `lead` times the weight of the edge's best other op (1.0: any lead)."""
    found = []
    for i, alpha in enumerate(alphas):
        weights = alpha.detach().float().softmax(-1)
        none = weights.shape[-1] - 1
        runner_up = weights[:, :none].max(-1).values
        top = (weights.argmax(-1) == none) & (weights[:, none] >= lead * runner_up)
        for j in torch.nonzero(top).flatten().tolist():
            found.append((i, j, float(weights[j, NONE_INDEX])))
    return found


def softmax_alpha_scalars(tower: str, alphas: list[Tensor]) -> dict[str, float]:
    """Tensorboard scalars `alpha_<tower>/node<i>_src<j>/<op>` of the softmaxed alphas."""
    out = {}
    for i, alpha in enumerate(alphas):
        weights = alpha.detach().float().softmax(-1).cpu()
        ops = primitives_for(weights.shape[-1])
        for j in range(weights.shape[0]):
            for k, op in enumerate(ops):
                out[f"alpha_{tower}/node{i}_src{j}/{op}"] = float(weights[j, k])
    return out
