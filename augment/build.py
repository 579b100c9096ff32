"""Assemble FCOS with the searched towers of a genotype (the augment stage) and pick the model."""
from __future__ import annotations

from torch import nn
from yacs.config import CfgNode

from fad.errors import ConfigError
from fad.modeling import build_detector
from fad.modeling.fcos import TowerHead, build_fcos, check_fad_config
from fad.nas.cells import AugmentTower
from fad.nas.genotype import Genotype, parse_genotype_text


def build_fad_head(cfg: CfgNode, num_classes: int, box: Genotype, cls: Genotype) -> TowerHead:
    """The searched FCOS head: box tower, cls tower (s0 = reduced box feature), predictors."""
    check_fad_config(cfg)
    f, fpn = cfg.MODEL.FAD, cfg.MODEL.FPN.OUT_CHANNELS
    t, c = f.TOWER_CHANNELS, f.EDGE_CHANNELS
    box_tower = AugmentTower(box, f.BOX_CELLS, (fpn, fpn), t, c)
    cls_tower = AugmentTower(cls, f.CLS_CELLS, (t, fpn), t, c)
    return TowerHead(box_tower, cls_tower, t, num_classes, cfg.MODEL.FCOS.PRIOR_PROB)


def build_fad_fcos(cfg: CfgNode, num_classes: int, genotype_text: str,
                   source: str = "<genotype>") -> nn.Module:
    """FCOS (backbone, FPN, losses of `fad.modeling.fcos`) with towers rebuilt from the text of a
    genotype.log; `source` names where the text came from in errors."""
    box, cls = parse_genotype_text(genotype_text, source, num_nodes=cfg.MODEL.FAD.NUM_NODES)
    return build_fcos(cfg, num_classes, head=build_fad_head(cfg, num_classes, box, cls))


def build_model(cfg: CfgNode, num_classes: int, genotype_text: str = "",
                source: str = "<genotype>") -> nn.Module:
    """The detector of a tool run: with a genotype, FCOS with its searched towers; else the
    detector of MODEL.META_ARCHITECTURE."""
    if not genotype_text:
        return build_detector(cfg, num_classes)
    if cfg.MODEL.META_ARCHITECTURE != "FCOS":
        raise ConfigError(f"{source}: a genotype needs MODEL.META_ARCHITECTURE FCOS, got "
                          f"{cfg.MODEL.META_ARCHITECTURE}; drop --genotype-file or change the "
                          "config")
    return build_fad_fcos(cfg, num_classes, genotype_text, source)
