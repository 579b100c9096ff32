"""Assemble FCOS with the searched towers of a genotype.log (the augment stage)."""
from __future__ import annotations

from torch import nn
from yacs.config import CfgNode

from fad.modeling.fcos import TowerHead, build_fcos, check_fad_config
from fad.nas.genotype import Genotype, GenotypeError, read_genotype_file

from .cells import AugmentTower


def build_fad_head(cfg: CfgNode, num_classes: int, box: Genotype, cls: Genotype) -> TowerHead:
    """The searched FCOS head: box tower, cls tower (s0 = reduced box feature), predictors."""
    check_fad_config(cfg)
    f, fpn = cfg.MODEL.FAD, cfg.MODEL.FPN.OUT_CHANNELS
    t, c = f.TOWER_CHANNELS, f.EDGE_CHANNELS
    box_tower = AugmentTower(box, f.BOX_CELLS, (fpn, fpn), t, c)
    cls_tower = AugmentTower(cls, f.CLS_CELLS, (t, fpn), t, c)
    return TowerHead(box_tower, cls_tower, t, num_classes, cfg.MODEL.FCOS.PRIOR_PROB)


def build_fad_fcos(cfg: CfgNode, num_classes: int, genotype_file: str) -> nn.Module:
    """FCOS (backbone, FPN, losses of `fad.modeling.fcos`) with towers rebuilt from the file."""
    try:
        box, cls = read_genotype_file(genotype_file, num_nodes=cfg.MODEL.FAD.NUM_NODES)
    except GenotypeError as exc:
        raise SystemExit(f"error: {exc}") from None
    return build_fcos(cfg, num_classes, head=build_fad_head(cfg, num_classes, box, cls))
