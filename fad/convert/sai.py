"""SAI release (zdaxie/SpatiallyAdaptiveInference-Detection, MMDetection v0.6) -> our
SparseResNet Faster R-CNN (configs/sai/), or with `backbone_only` just the SparseResNet body.

The release stores `{"state_dict": ..., "meta": ..., "optimizer": ...}`. Names:

| original (mmdet v1)                         | ours (torchvision Faster R-CNN)                   |
|---------------------------------------------|---------------------------------------------------|
| backbone.{conv1,bn1,layerN.i.*}             | model.backbone.body.{conv1,bn1,layerN.i.*}     |
| backbone.layerN.i.conv{1,2}_sigma           | ...layerN.i.interp{1,2}.scale                  |
| backbone.layerN.i.conv{1,2}_gumbel.cur_T    | ...layerN.i.sampler{1,2}.temperature           |
| neck.lateral_convs.i.conv                   | model.backbone.fpn.inner_blocks.i.0            |
| neck.fpn_convs.i.conv                       | model.backbone.fpn.layer_blocks.i.0            |
| rpn_head.rpn_conv / rpn_cls / rpn_reg       | model.rpn.head.conv.0.0 / cls_logits / bbox_pred |
| bbox_head.shared_fcs.0 / shared_fcs.1       | model.roi_heads.box_head.fc6 / fc7               |
| bbox_head.fc_cls / fc_reg                   | model.roi_heads.box_predictor.{cls_score,bbox_pred}

Mask convs (`conv{1,2}_mask`), DCN offsets (`conv2_offset`) and the DCN weight (`conv2`) keep
their names. No tensor needs transforming: mmdet v1 puts background at class 0 and the 80 COCO
classes after it in category-id order, as torchvision (our labels + 1); the RPN's sigmoid
objectness and anchor-major deltas, the anchors (sizes 32-512, ratios 0.5/1/2 in the same
order) and the box coders (RPN stds 1 = torchvision weights 1; R-CNN stds 0.1/0.2 = weights
10/5) agree. A class-agnostic `fc_reg` (4 outputs) is repeated for every class. What cannot be
mapped is listed in `NOTES` (mmdet v1's +1 pixel box convention).
"""
from __future__ import annotations

from torch import Tensor
from yacs.config import CfgNode

from fad.errors import CheckpointError
from fad.modeling.backbone.resnet import STAGE_BLOCKS

from .common import (
    Conversion,
    Options,
    Rule,
    Setting,
    backbone_body,
    build_model,
    check_settings,
    count_indexed,
    match_state,
    rename,
)

STATE_KEY = "state_dict"  # where the release file keeps its state dict
BODY = "model.backbone.body."
HEAD_RULES: list[Rule] = [
    (r"neck\.lateral_convs\.(\d+)\.conv\.", r"model.backbone.fpn.inner_blocks.\1.0."),
    (r"neck\.fpn_convs\.(\d+)\.conv\.", r"model.backbone.fpn.layer_blocks.\1.0."),
    (r"rpn_head\.rpn_conv\.", "model.rpn.head.conv.0.0."),
    (r"rpn_head\.rpn_cls\.", "model.rpn.head.cls_logits."),
    (r"rpn_head\.rpn_reg\.", "model.rpn.head.bbox_pred."),
    (r"bbox_head\.shared_fcs\.0\.", "model.roi_heads.box_head.fc6."),
    (r"bbox_head\.shared_fcs\.1\.", "model.roi_heads.box_head.fc7."),
    (r"bbox_head\.fc_cls\.", "model.roi_heads.box_predictor.cls_score."),
    (r"bbox_head\.fc_reg\.", "model.roi_heads.box_predictor.bbox_pred."),
]
NOTES = [
    "not mapped: mmdet v1 boxes use the +1 pixel convention (width = x2 - x1 + 1, anchor "
    "centres at (stride - 1) / 2, RoIAlign ends at x2 + 1) where torchvision uses none; boxes "
    "can differ by up to ~1 pixel and AP slightly",
    "box coders: the release's R-CNN stds (0.1, 0.1, 0.2, 0.2) and RPN stds (1, 1, 1, 1) equal "
    "torchvision's weights (10, 10, 5, 5) and (1, 1, 1, 1); a model trained with other stds "
    "is not handled",
    "test-time RPN / R-CNN limits come from MODEL.FASTER_RCNN.* (the release: 1000 proposals "
    "per level and in all, NMS 0.7; score 0.05, NMS 0.5, 100 detections)",
]


def body_rules(prefix: str) -> list[Rule]:
    """`backbone.*` onto our SparseResNet body under `prefix`."""
    return [(r"backbone\.(layer\d+\.\d+)\.conv([12])_sigma$", prefix + r"\1.interp\2.scale"),
            (r"backbone\.(layer\d+\.\d+)\.conv([12])_gumbel\.cur_T$",
             prefix + r"\1.sampler\2.temperature"),
            (r"backbone\.", prefix)]


def _depth(state: dict[str, Tensor]) -> int | None:
    """ResNet depth from the block counts of layer1..layer4 (None: not a known ResNet)."""
    blocks = tuple(count_indexed(state, f"backbone.layer{i}.") for i in range(1, 5))
    bottleneck = "backbone.layer1.0.conv3.weight" in state
    for depth, counts in STAGE_BLOCKS.items():
        if counts == blocks and bottleneck == (depth >= 50):
            return depth
    return None


def sai_settings(state: dict[str, Tensor], cfg: CfgNode, backbone_only: bool) -> list[Setting]:
    """Backbone (and FPN) architecture of the checkpoint next to the config's."""
    sp = cfg.MODEL.SPARSE
    dcn = tuple(any(k.startswith(f"backbone.layer{i}.") and ".conv2_offset." in k for k in state)
                for i in range(1, 5))
    settings = [
        Setting("MODEL.BACKBONE.NAME", "sparse_resnet", cfg.MODEL.BACKBONE.NAME),
        Setting("MODEL.BACKBONE.DEPTH", _depth(state), cfg.MODEL.BACKBONE.DEPTH),
        Setting("MODEL.SPARSE.MASKED", "backbone.layer1.0.conv1_mask.weight" in state, sp.MASKED),
        Setting("MODEL.SPARSE.STAGE_WITH_DCN", dcn, tuple(bool(x) for x in sp.STAGE_WITH_DCN)),
    ]
    if not backbone_only:
        lateral = state.get("neck.lateral_convs.0.conv.weight")
        settings += [
            Setting("MODEL.META_ARCHITECTURE", "FasterRCNN", cfg.MODEL.META_ARCHITECTURE),
            Setting("MODEL.FPN.OUT_CHANNELS", None if lateral is None else lateral.shape[0],
                    cfg.MODEL.FPN.OUT_CHANNELS)]
    return settings


def convert(state: dict[str, Tensor], extra: dict, cfg: CfgNode, options: Options,
            source: str) -> Conversion:
    """SAI Faster R-CNN -> ours; `options.backbone_only`: the body's state dict alone (its own
    names, for MODEL.BACKBONE.PRETRAINED of any detector with a sparse_resnet body)."""
    check_settings(sai_settings(state, cfg, options.backbone_only), source)
    cls = state.get("bbox_head.fc_cls.weight")
    if options.backbone_only:
        kept = {k: v for k, v in state.items() if k.startswith("backbone.")}
        renamed, unmatched = rename(kept, body_rules(""))
        target = backbone_body(build_model(cfg, 1)).state_dict()
        notes = [f"kept the backbone body only ({len(kept)} tensors; dropped "
                 f"{len(state) - len(kept)} of neck / rpn_head / bbox_head); load it with "
                 "MODEL.BACKBONE.PRETRAINED OUT.pth"]
        return Conversion(match_state(renamed, target, source, unmatched), 0, notes)
    if cls is None or cls.shape[0] < 2:
        raise CheckpointError(f"{source}: no bbox_head.fc_cls with background + classes; is it "
                              "an SAI Faster R-CNN release?")
    num_classes = cls.shape[0] - 1  # background first, as torchvision
    renamed, unmatched = rename(state, body_rules(BODY) + HEAD_RULES)
    notes = [f"{num_classes} classes (background at 0 in both: no reordering)"] + NOTES
    reg = "model.roi_heads.box_predictor.bbox_pred"
    if f"{reg}.weight" in renamed and renamed[f"{reg}.weight"].shape[0] == 4:
        for part in ("weight", "bias"):
            renamed[f"{reg}.{part}"] = renamed[f"{reg}.{part}"].repeat(
                num_classes + 1, *[1] * (renamed[f"{reg}.{part}"].dim() - 1))
        notes.append("class-agnostic box regression repeated for every class (same boxes)")
    target = build_model(cfg, num_classes).state_dict()
    return Conversion(match_state(renamed, target, source, unmatched), num_classes, notes)
