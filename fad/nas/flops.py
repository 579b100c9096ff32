"""FLOPs of the augment head and of its parts, counted on the very modules augment builds.

FlopCounterMode on the meta device (no compute, any width), batch 1, on the five FPN levels
P3-P7 (`fad.modeling.fcos.STRIDES`) of an input of (H, W) padded to INPUT.SIZE_DIVISIBILITY:
2 FLOPs per multiply-add, torch's convention. The search's cost table (`fad.search.cost`) is
`edge_flops` of every candidate plus the FLOPs of `fixed_head`, both built from `fad.nas.cells`
and `build_fad_head`, so a change of the augment edge or tower reaches the table by itself.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode
from yacs.config import CfgNode

from fad.data.transforms import padded_size
from fad.modeling.fcos import STRIDES, TowerHead, build_fad_head

from . import cells
from .genotype import Genotype
from .primitives import SEARCHABLE


def level_sizes(input_size: Sequence[int]) -> list[tuple[int, int]]:
    """(H_l, W_l) of P3-P7 for a padded input (P6, P7: stride-2 3x3 convs, so ceil halves)."""
    return [(math.ceil(input_size[0] / s), math.ceil(input_size[1] / s)) for s in STRIDES]


def without_norms(module: nn.Module) -> nn.Module:
    """`module` with every GroupNorm / BatchNorm replaced by an identity, in place (returned).

    The counter counts no FLOPs for norms, while a norm on meta tensors runs torch's Python
    reference of the op under the counter (~10 ms a call; the search counts hundreds per
    checkpoint), so the modules this file builds to count drop them first: same total."""
    for name, child in module.named_children():
        if isinstance(child, (nn.GroupNorm, nn.modules.batchnorm._BatchNorm)):
            setattr(module, name, nn.Identity())
        else:
            without_norms(child)
    return module


def count_flops(module: nn.Module, *inputs: object) -> int:
    """FlopCounterMode's total (2 per multiply-add) of `module(*inputs)`, without autograd."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return counter.get_total_flops()


def edge_flops(op: str, tower_channels: int, edge_channels: int,
               input_size: Sequence[int]) -> int:
    """FLOPs of one `augment_edge` with op `op` run on every level of a padded (H, W) input
    (built on meta, never on the host: no memory, and no copy under a fake-tensor mode)."""
    with torch.device("meta"):
        edge = without_norms(cells.augment_edge(op, tower_channels, edge_channels))
    return sum(count_flops(edge, torch.empty(1, tower_channels, h, w, device="meta"))
               for h, w in level_sizes(input_size))


class _NoEdge(nn.Module):
    """An edge that costs nothing: `forward(x: Tensor[N, T, H, W]) -> zeros like x`."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x)


def fixed_head(cfg: CfgNode, num_classes: int) -> TowerHead:
    """The augment head of the config with every edge replaced by zeros: what does not depend on
    the genotype (cell-input adapters, reduce convs, predictors, scales).
    `forward(features: list[Tensor[N, C_fpn, H_l, W_l]])` as the head's."""
    n = cfg.MODEL.FAD.NUM_NODES
    probe = Genotype([[(SEARCHABLE[0], 0), (SEARCHABLE[0], 1)] for _ in range(n)],
                     range(2, n + 2))
    head = build_fad_head(cfg, num_classes, probe, probe)
    for cell in head.modules():
        if isinstance(cell, cells.AugmentCell):
            cell.edges = nn.ModuleList(_NoEdge() for _ in cell.edges)
    return head


def _fpn_features(cfg: CfgNode, input_size: Sequence[int]) -> list[Tensor]:
    """Meta P3-P7 maps `Tensor[1, C_fpn, H_l, W_l]` of a padded (H, W) input."""
    return [torch.empty(1, cfg.MODEL.FPN.OUT_CHANNELS, h, w, device="meta")
            for h, w in level_sizes(input_size)]


def fixed_flops(cfg: CfgNode, num_classes: int, input_size: Sequence[int]) -> int:
    """FLOPs of `fixed_head` for one (H, W) image (padded to INPUT.SIZE_DIVISIBILITY)."""
    with torch.device("meta"):
        head = without_norms(fixed_head(cfg, num_classes))
    return count_flops(head, _fpn_features(cfg, padded_size(cfg, input_size)))


def head_flops(cfg: CfgNode, num_classes: int, box: Genotype, cls: Genotype,
               input_size: Sequence[int]) -> dict[str, int]:
    """{"box_tower", "cls_tower", "head"} FLOPs of the augment head of (box, cls) for one
    (H, W) image, padded to INPUT.SIZE_DIVISIBILITY; "head" includes the reduce convs and
    predictors."""
    with torch.device("meta"):
        head = without_norms(build_fad_head(cfg, num_classes, box, cls))
    feats = _fpn_features(cfg, padded_size(cfg, input_size))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        head(feats)
    by_module = counter.get_flop_counts()
    name = type(head).__name__

    def total(key: str) -> int:
        return sum(by_module.get(key, {}).values())

    return {"box_tower": total(f"{name}.box_tower"), "cls_tower": total(f"{name}.cls_tower"),
            "head": counter.get_total_flops()}
