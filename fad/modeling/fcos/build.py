"""`build_fcos(cfg, num_classes)`: FCOS of MODEL.FCOS.* with the plain head, or, when
MODEL.FAD.GENOTYPE holds a genotype, with the FAD searched head rebuilt from it (the augment
stage: `fad-train --genotype-file genotype.log` fills that key).

MODEL.FAD.GENOTYPE is a genotype file's path or its two `Genotype(...)` lines (box tower, then
cls tower); `resolve_genotype` turns a path into the text when a tool loads its config, so the
run's config.yaml and checkpoints say which network was trained.
"""
from __future__ import annotations

from torch import nn
from yacs.config import CfgNode

from fad.errors import ConfigError
from fad.modeling.backbone import build_backbone
from fad.nas.cells import AugmentTower
from fad.nas.genotype import Genotype, genotype_text, parse_genotype_text

from .head import FCOSHead
from .model import FCOS
from .tower_head import TowerHead


def fad_genotypes(cfg: CfgNode) -> tuple[Genotype, Genotype] | None:
    """(box, cls) genotypes of MODEL.FAD.GENOTYPE (text or file), checked against
    MODEL.FAD.NUM_NODES; None when the key is empty (plain FCOS head)."""
    text, where = genotype_text(cfg.MODEL.FAD.GENOTYPE)
    if not text:
        return None
    return parse_genotype_text(text, where, num_nodes=cfg.MODEL.FAD.NUM_NODES)


def resolve_genotype(cfg: CfgNode, genotype_file: str = "") -> None:
    """Set MODEL.FAD.GENOTYPE (of a mutable `cfg`) to the genotype text: that of `genotype_file`
    (`--genotype-file`) when given, else of the file the key names, else the key's own text.

    A genotype that does not parse or fit the config, or one given to another detector than FCOS,
    is a one-line error here, before any work.
    """
    if genotype_file:
        cfg.MODEL.FAD.GENOTYPE = genotype_file
    text, where = genotype_text(cfg.MODEL.FAD.GENOTYPE)
    cfg.MODEL.FAD.GENOTYPE = text
    if not text:
        return
    if cfg.MODEL.META_ARCHITECTURE != "FCOS":
        raise ConfigError(f"{where}: a genotype needs MODEL.META_ARCHITECTURE FCOS, got "
                          f"{cfg.MODEL.META_ARCHITECTURE}; drop --genotype-file / "
                          "MODEL.FAD.GENOTYPE or change the config")
    parse_genotype_text(text, where, num_nodes=cfg.MODEL.FAD.NUM_NODES)


def build_fad_head(cfg: CfgNode, num_classes: int, box: Genotype, cls: Genotype) -> TowerHead:
    """The searched FCOS head: box tower on (P_l, P_l), cls tower on (reduced box feature, P_l),
    MODEL.FAD.{BOX,CLS}_CELLS augment cells each, then the TowerHead predictors."""
    f, fpn = cfg.MODEL.FAD, cfg.MODEL.FPN.OUT_CHANNELS
    t, c = f.TOWER_CHANNELS, f.EDGE_CHANNELS
    box_tower = AugmentTower(box, f.BOX_CELLS, (fpn, fpn), t, c)
    cls_tower = AugmentTower(cls, f.CLS_CELLS, (t, fpn), t, c)
    return TowerHead(box_tower, cls_tower, t, num_classes, cfg.MODEL.FCOS.PRIOR_PROB)


def build_fcos(cfg: CfgNode, num_classes: int, head: nn.Module | None = None) -> FCOS:
    """FCOS for `num_classes` classes: with `head` when given (the search's supernet head), else
    the FAD head of MODEL.FAD.GENOTYPE, else the plain head of MODEL.FCOS.NUM_CONVS convs."""
    backbone = build_backbone(cfg)
    if head is None:
        genotypes = fad_genotypes(cfg)
        head = build_fad_head(cfg, num_classes, *genotypes) if genotypes else FCOSHead(
            backbone.out_channels, num_classes, cfg.MODEL.FCOS.NUM_CONVS,
            cfg.MODEL.FCOS.PRIOR_PROB)
    f, i = cfg.MODEL.FCOS, cfg.INPUT
    return FCOS(backbone, head, center_sampling_radius=f.CENTER_SAMPLING_RADIUS,
                focal_alpha=f.FOCAL_ALPHA, focal_gamma=f.FOCAL_GAMMA,
                score_thresh=f.SCORE_THRESH, topk_candidates=f.TOPK_CANDIDATES,
                nms_thresh=f.NMS_THRESH, detections_per_img=f.DETECTIONS_PER_IMG,
                size_divisible=i.SIZE_DIVISIBILITY, pixel_mean=tuple(i.PIXEL_MEAN),
                pixel_std=tuple(i.PIXEL_STD))
