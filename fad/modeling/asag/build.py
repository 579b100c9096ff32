"""`build_asag(cfg, num_classes)`: the ASAG detector of MODEL.ASAG.* (MODEL.META_ARCHITECTURE
ASAG)."""
from __future__ import annotations

from yacs.config import CfgNode

from fad.errors import ConfigError
from fad.modeling.backbone import build_backbone_body

from .anchor_generator import AdaptiveAnchorGenerator
from .anchor_loss import AnchorLoss
from .criterion import AsagCriterion
from .detector import ASAG, AsagBackbone
from .heads import DecoderHeads
from .matcher import AreaWeightedMatcher
from .relation import RelationBlock

STRIDES = (4, 8, 16, 32)  # P2-P5


def check_asag_config(cfg: CfgNode, num_classes: int) -> None:
    """Raise a one-line ConfigError naming the keys of an inconsistent ASAG setup (the parts
    check their own keys: NUM_QUERIES, USED_INFERENCE_LEVEL, DECODER, USED_HEAD)."""
    a = cfg.MODEL.ASAG
    problems = [
        (num_classes < 1, f"num_classes must be >= 1, got {num_classes}"),
        (a.HIDDEN_DIM % a.NHEADS != 0,
         f"MODEL.ASAG.HIDDEN_DIM={a.HIDDEN_DIM} must be divisible by MODEL.ASAG.NHEADS={a.NHEADS}"),
        (a.HIDDEN_DIM % 8 != 0, f"MODEL.ASAG.HIDDEN_DIM={a.HIDDEN_DIM} must be divisible by 8"),
        (a.DECODER == "adamixer" and a.HIDDEN_DIM % a.GROUPS != 0,
         f"MODEL.ASAG.HIDDEN_DIM={a.HIDDEN_DIM} must be divisible by MODEL.ASAG.GROUPS={a.GROUPS}"),
        (a.USE_DN and a.NUM_DN < 1, "MODEL.ASAG.USE_DN needs MODEL.ASAG.NUM_DN >= 1"),
        (a.NMS_THRESH < 0 or a.NMS_THRESH > 1,
         f"MODEL.ASAG.NMS_THRESH must be in [0, 1], got {a.NMS_THRESH}"),
        (a.MAX_PATCHES_PER_LEVEL < 0, "MODEL.ASAG.MAX_PATCHES_PER_LEVEL must be >= 0"),
    ]
    for bad, message in problems:
        if bad:
            raise ConfigError(f"{message}; fix the config file or the KEY VALUE overrides")


def build_asag(cfg: CfgNode, num_classes: int, **kwargs) -> ASAG:
    """The ASAG detector of `cfg` for `num_classes` classes."""
    if kwargs:
        raise TypeError(f"build_asag: unexpected arguments {sorted(kwargs)}")
    check_asag_config(cfg, num_classes)
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
