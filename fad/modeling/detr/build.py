"""`build_deformable_detr(cfg, num_classes)`: Deformable DETR or Sparse DETR from MODEL.DETR.*."""
from __future__ import annotations

from yacs.config import CfgNode

from fad.modeling.set_prediction import HungarianMatcher

from .backbone import MultiLevelBackbone, build_body
from .criterion import SetCriterion
from .detector import DeformableDETR
from .heads import DetrHeads
from .transformer import DeformableTransformer


def build_deformable_detr(cfg: CfgNode, num_classes: int, **kwargs) -> DeformableDETR:
    """The detector of `MODEL.META_ARCHITECTURE` DeformableDETR or SparseDETR for `num_classes`
    (the MODEL.DETR keys are checked when the config is loaded, `fad.config.validate`)."""
    if kwargs:
        raise TypeError(f"build_deformable_detr: unexpected arguments {sorted(kwargs)}")
    if num_classes < 1:
        raise ValueError(f"build_deformable_detr: num_classes must be >= 1, got {num_classes}")
    d = cfg.MODEL.DETR
    body, channels = build_body(cfg)
    backbone = MultiLevelBackbone(body, channels, d.D_MODEL, d.NUM_FEATURE_LEVELS, d.GN_GROUPS)
    transformer = DeformableTransformer(
        d_model=d.D_MODEL, n_heads=d.NHEADS, num_encoder_layers=d.ENC_LAYERS,
        num_decoder_layers=d.DEC_LAYERS, dim_feedforward=d.DIM_FEEDFORWARD, dropout=d.DROPOUT,
        num_feature_levels=d.NUM_FEATURE_LEVELS, enc_n_points=d.ENC_N_POINTS,
        dec_n_points=d.DEC_N_POINTS, num_queries=d.NUM_QUERIES, two_stage=d.TWO_STAGE,
        rho=d.RHO, eff_query_init=d.EFF_QUERY_INIT, eff_specific_head=d.EFF_SPECIFIC_HEAD)
    num_enc_aux = d.ENC_LAYERS - 1 if d.USE_ENC_AUX_LOSS else 0
    heads = DetrHeads(d.D_MODEL, num_classes, d.DEC_LAYERS, d.WITH_BOX_REFINE, d.TWO_STAGE,
                      num_enc_aux)
    matcher = HungarianMatcher(d.SET_COST_CLASS, d.SET_COST_BBOX, d.SET_COST_GIOU,
                               d.FOCAL_ALPHA, d.FOCAL_GAMMA)
    weights = {"loss_ce": d.CLS_LOSS_COEF, "loss_bbox": d.BBOX_LOSS_COEF,
               "loss_giou": d.GIOU_LOSS_COEF}
    criterion = SetCriterion(num_classes, matcher, weights, d.FOCAL_ALPHA, d.FOCAL_GAMMA)
    return DeformableDETR(
        backbone, transformer, heads, criterion, tuple(cfg.INPUT.PIXEL_MEAN),
        tuple(cfg.INPUT.PIXEL_STD), cfg.INPUT.SIZE_DIVISIBILITY, aux_loss=d.AUX_LOSS,
        num_detections=d.DETECTIONS_PER_IMG, use_enc_aux_loss=d.USE_ENC_AUX_LOSS,
        mask_prediction_coef=d.MASK_PREDICTION_COEF, dam_half_pixel=d.DAM_HALF_PIXEL)
