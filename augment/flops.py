"""FLOPs of a searched head, counted on the augment head built from its genotype.

Counted with FlopCounterMode on the meta device (no compute, any width), batch 1, on the five FPN
levels P3-P7 of a padded input of (H, W): 2 FLOPs per multiply-add, torch's convention.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode
from yacs.config import CfgNode

from fad.nas.genotype import Genotype

from .build import build_fad_head

STRIDES = (8, 16, 32, 64, 128)


def head_flops(cfg: CfgNode, num_classes: int, box: Genotype, cls: Genotype,
               input_size: Sequence[int]) -> dict[str, int]:
    """{"box_tower", "cls_tower", "head"} FLOPs of the augment head of (box, cls) for one
    (H, W) image, padded to INPUT.SIZE_DIVISIBILITY; "head" includes the reduce convs and
    predictors."""
    div = max(int(cfg.INPUT.SIZE_DIVISIBILITY), 1)
    h, w = (math.ceil(s / div) * div for s in input_size)
    head = build_fad_head(cfg, num_classes, box, cls).to("meta")
    feats = [torch.empty(1, cfg.MODEL.FPN.OUT_CHANNELS, math.ceil(h / s), math.ceil(w / s),
                         device="meta") for s in STRIDES]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        head(feats)
    by_module = counter.get_flop_counts()
    name = type(head).__name__

    def total(key: str) -> int:
        return sum(by_module.get(key, {}).values())

    return {"box_tower": total(f"{name}.box_tower"), "cls_tower": total(f"{name}.cls_tower"),
            "head": counter.get_total_flops()}
