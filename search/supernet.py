"""The FCOS supernet: FCOS of `fad.modeling.fcos` with two search towers, alphas kept apart.

`Supernet.arch_parameters()` are the alphas (Adam, architect); `weight_named_parameters()` are
all other trainable parameters (SGD). The two sets are disjoint; alphas live inside the model so
`state_dict()` (and so every checkpoint) carries them.
"""
from __future__ import annotations

from torch import Tensor, nn
from yacs.config import CfgNode

from fad.modeling.fcos import TowerHead, build_fcos

from .cells import SearchTower

TOWERS = ("box", "cls")


def build_search_head(cfg: CfgNode, num_classes: int, shared: bool = True) -> TowerHead:
    """Box and cls search towers (cls s0 = reduced box feature) inside the FCOS head frame."""
    f, fpn = cfg.MODEL.FAD, cfg.MODEL.FPN.OUT_CHANNELS
    args = (f.SEARCH_CELLS, f.NUM_NODES)
    kw = dict(tower_channels=f.TOWER_CHANNELS, edge_channels=f.EDGE_CHANNELS,
              alpha_init_std=cfg.SEARCH.ALPHA_INIT_STD, shared=shared, dil3=f.DIL3)
    box = SearchTower(*args, in_channels=(fpn, fpn), **kw)
    cls = SearchTower(*args, in_channels=(f.TOWER_CHANNELS, fpn), **kw)
    return TowerHead(box, cls, f.TOWER_CHANNELS, num_classes, cfg.MODEL.FCOS.PRIOR_PROB)


class Supernet(nn.Module):
    """`forward(images, targets=None)` as the FCOS detector; plus the alpha/weight split."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, images: list[Tensor], targets: list[dict] | None = None):
        return self.detector(images, targets)

    def tower_alphas(self) -> dict[str, list[nn.Parameter]]:
        """{"box": [Tensor[i + 2, 11 (13 with DIL3)] per node], "cls": [...]}."""
        head = self.detector.head
        return {"box": list(head.box_tower.alphas), "cls": list(head.cls_tower.alphas)}

    @property
    def num_classes(self) -> int:
        """Classes of the head's classifier (the cost of `cls_logits` depends on it)."""
        return self.detector.head.cls_logits.out_channels

    def arch_parameters(self) -> list[nn.Parameter]:
        return [a for tower in TOWERS for a in self.tower_alphas()[tower]]

    def weight_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Trainable (name, parameter) pairs that are not alphas."""
        arch = {id(a) for a in self.arch_parameters()}
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad and id(p) not in arch]

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.weight_named_parameters()]


def build_supernet(cfg: CfgNode, num_classes: int) -> Supernet:
    """FCOS (backbone, FPN, targets, losses) around the search head."""
    return Supernet(build_fcos(cfg, num_classes, head=build_search_head(cfg, num_classes)))
