"""`build_asag(cfg, num_classes)`: the ASAG detector of MODEL.ASAG.* (MODEL.META_ARCHITECTURE
ASAG)."""
from __future__ import annotations

from yacs.config import CfgNode

from fad.modeling.backbone import build_backbone_body

from .anchor_generator import AdaptiveAnchorGenerator
from .anchor_loss import AnchorLoss
from .criterion import AsagCriterion
from .detector import ASAG, AsagBackbone
from .heads import DecoderHeads
from .matcher import AreaWeightedMatcher
from .relation import RelationBlock

STRIDES = (4, 8, 16, 32)  # P2-P5


def build_asag(cfg: CfgNode, num_classes: int, **kwargs) -> ASAG:
    """The ASAG detector of `cfg` for `num_classes` classes (the MODEL.ASAG keys are checked when
    the config is loaded, `fad.config.validate`)."""
    if kwargs:
        raise TypeError(f"build_asag: unexpected arguments {sorted(kwargs)}")
    if num_classes < 1:
        raise ValueError(f"build_asag: num_classes must be >= 1, got {num_classes}")
    a = cfg.MODEL.ASAG
    dim = a.HIDDEN_DIM
    body, channels = build_backbone_body(cfg)
    backbone = AsagBackbone(body, channels, dim)
    generator = AdaptiveAnchorGenerator(
        dim, a.NUM_QUERIES, a.USED_INFERENCE_LEVEL, a.COMPRESS_DIM, a.ANCHOR_HIDDEN_DIM,
        a.USE_TARGET_EPOCH, a.MAX_PATCHES_PER_LEVEL or None)
    relation = RelationBlock(num_classes, dim, a.NHEADS, a.DIM_FEEDFORWARD, dim, STRIDES)
    if a.DECODER == "adamixer":
        head_kwargs = {"in_channels": dim, "groups": a.GROUPS, "in_points": a.IN_POINTS,
                       "out_points": a.OUT_POINTS}
    else:
        head_kwargs = {"dynamic_dim": a.DYNAMIC_DIM}
    decoder = DecoderHeads(num_classes, a.DECODER, a.NUM_DECODER_HEADS, a.USED_HEAD, dim,
                           num_heads=a.NHEADS, ffn_dim=a.DIM_FEEDFORWARD, strides=STRIDES,
                           **head_kwargs)
    matcher = AreaWeightedMatcher(a.SET_COST_CLASS, a.SET_COST_BBOX, a.SET_COST_GIOU,
                                  a.AREA_WEIGHT)
    weights = {"loss_ce": a.CLS_LOSS_COEF, "loss_bbox": a.BBOX_LOSS_COEF,
               "loss_giou": a.GIOU_LOSS_COEF}
    criterion = AsagCriterion(num_classes, matcher, weights, a.AREA_WEIGHT, a.GAMMA1, a.GAMMA2)
    coef = a.ANCHOR_LOSS_COEF
    anchor_loss = AnchorLoss(2 * coef, coef, 0.5 * coef, a.SET_COST_CLASS, a.SET_COST_BBOX,
                             a.SET_COST_GIOU, a.AREA_WEIGHT, a.GAMMA1, a.GAMMA2,
                             reference_flip_bug=a.REFERENCE_FLIP_BUG)
    return ASAG(backbone, generator, relation, decoder, criterion, anchor_loss,
                tuple(cfg.INPUT.PIXEL_MEAN), tuple(cfg.INPUT.PIXEL_STD),
                cfg.INPUT.SIZE_DIVISIBILITY, a.DETECTIONS_PER_IMG, a.NMS_THRESH,
                a.FAST_INFERENCE, a.NUM_DN if a.USE_DN else 0,
                a.NOISE_SCALE if a.FIX_NOISE_SCALE else None)
