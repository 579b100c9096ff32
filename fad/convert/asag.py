"""ASAG release (iSEE-Laboratory/ASAG) -> our ASAG detector.

The release stores `{"model": state_dict, "args": Namespace, ...}` with the parts `backbone.0.body`
(torchvision ResNet, FrozenBN with trainable affine and no `num_batches_tracked`), `neck`
(torchvision's FeaturePyramidNetwork), `anchor_generator`, `rpn` (the RelationBlock) and
`decoder` (AdaMixer `bbox_head.k` or SparseRCNN `head_series.k`, plus `decoder_embedding`).
Shapes and flattening orders are equal on both sides, so every tensor is only renamed (the
name tables are in docs/asag.md). Classes: the COCO release has 80 logits in category-id order,
fad.data's contiguous label order; no rows are selected.

A four-head release does not fit a one-head config (MODEL.ASAG.NUM_DECODER_HEADS 1): that is
refused, naming the key, rather than silently keeping one head; evaluation runs only the used
head anyway, so convert into the four-head config and pick the head with MODEL.ASAG.USED_HEAD.
"""
from __future__ import annotations

import re
from typing import Any

from torch import Tensor
from yacs.config import CfgNode

from fad.errors import CheckpointError

from .common import (
    Conversion,
    Options,
    Rule,
    Setting,
    build_model,
    check_settings,
    count_indexed,
    match_state,
    rename,
    stored_args,
)

STATE_KEY = "model"  # where the release file keeps its state dict
BACKBONE_RULES: list[Rule] = [
    (r"backbone\.0\.body\.conv1\.", "backbone.body.stem.0."),
    (r"backbone\.0\.body\.bn1\.", "backbone.body.stem.1."),
    (r"backbone\.0\.body\.", "backbone.body."),
    (r"neck\.(inner|layer)_blocks\.(\d+)\.(weight|bias)$", r"backbone.fpn.\1_blocks.\2.0.\3"),
    (r"neck\.", "backbone.fpn."),
]
G = "anchor_generator."
ANCHOR_RULES: list[Rule] = [
    (r"anchor_generator\.compress\.", G + "compress."),
    (r"anchor_generator\.P6\.", G + "p6."),
    (r"anchor_generator\.layernorm\.0\.", G + "coarse_norm."),
    (r"anchor_generator\.layernorm\.1\.", G + "patch_norms.P4."),
    (r"anchor_generator\.layernorm\.2\.", G + "patch_norms.P3."),
    (r"anchor_generator\.pos_embedding\.0\.weight$", G + "coarse_pos"),
    (r"anchor_generator\.pos_embedding\.1\.weight$", G + "patch_pos.P4"),
    (r"anchor_generator\.pos_embedding\.2\.weight$", G + "patch_pos.P3"),
    (r"anchor_generator\.proj_all\.layers\.0\.", G + "coarse_mlp.0."),
    (r"anchor_generator\.proj_all\.layers\.1\.", G + "coarse_mlp.2."),
    (r"anchor_generator\.proj_all\.layers\.2\.", G + "coarse_mlp.4."),
    (r"anchor_generator\.proj_patch\.layers\.0\.", G + "patch_mlp.0."),
    (r"anchor_generator\.proj_patch\.layers\.1\.", G + "patch_mlp.2."),
    (r"anchor_generator\.proj_patch\.layers\.2\.", G + "patch_mlp.4."),
]
# prediction branches, the same names in the RelationBlock and the AdaMixer heads
BRANCH_RULES = [("cls_fcs", "cls_branch"), ("fc_cls", "cls_logits"), ("reg_fcs", "reg_branch"),
                ("fc_reg", "box_delta")]
RPN_RULES: list[Rule] = [(rf"rpn\.{re.escape(ref)}\.", f"relation.{ours}.") for ref, ours in [
    ("roi", "roi_proj"), ("tokens_norm1", "roi_norm"), ("attn", "self_attn.attn"),
    ("tokens_norm3", "self_attn.norm"), ("tokens_proj.layers.0", "ffn.0"),
    ("tokens_proj.layers.1", "ffn.2"), ("tokens_norm2", "ffn_norm"), *BRANCH_RULES]]
RPN_RULES.append((r"rpn\.iof_tau$", "relation.self_attn.iof_tau"))
H = r"decoder.heads.\1."
ADAMIXER_RULES: list[Rule] = [
    (r"decoder\.bbox_head\.(\d+)\.iof_tau$", r"decoder.heads.\1.self_attn.iof_tau"),
    (r"decoder\.bbox_head\.(\d+)\.attention_norm\.", H + "self_attn.norm."),
    (r"decoder\.bbox_head\.(\d+)\.attention\.", H + "self_attn.attn."),
    (r"decoder\.bbox_head\.(\d+)\.sampling_n_mixing\.sampling_offset_generator\.0\.",
     H + "offset_generator."),
    (r"decoder\.bbox_head\.(\d+)\.sampling_n_mixing\.adaptive_mixing\.parameter_generator\.0\.",
     H + "mixing.param_generator."),
    (r"decoder\.bbox_head\.(\d+)\.sampling_n_mixing\.adaptive_mixing\.out_proj\.",
     H + "mixing.out_proj."),
    (r"decoder\.bbox_head\.(\d+)\.sampling_n_mixing\.norm\.", H + "mixing_norm."),
    (r"decoder\.bbox_head\.(\d+)\.ffn\.layers\.0\.", H + "ffn.0."),
    (r"decoder\.bbox_head\.(\d+)\.ffn\.layers\.1\.", H + "ffn.2."),
    (r"decoder\.bbox_head\.(\d+)\.ffn_norm\.", H + "ffn_norm."),
] + [(rf"decoder\.bbox_head\.(\d+)\.{re.escape(ref)}\.", H + ours + ".")
     for ref, ours in BRANCH_RULES]
SPARSERCNN_RULES: list[Rule] = [
    (rf"decoder\.head_series\.(\d+)\.{re.escape(ref)}\.", H + ours + ".") for ref, ours in [
        ("self_attn", "self_attn"),
        ("inst_interact.dynamic_layer", "dynamic_conv.param_generator"),
        ("inst_interact.norm1", "dynamic_conv.norm1"),
        ("inst_interact.norm2", "dynamic_conv.norm2"),
        ("inst_interact.out_layer", "dynamic_conv.out_proj"),
        ("inst_interact.norm3", "dynamic_conv.out_norm"), ("norm1", "attn_norm"),
        ("norm2", "conv_norm"), ("linear1", "ffn.0"), ("linear2", "ffn.2"), ("norm3", "ffn_norm"),
        ("cls_module", "cls_branch"), ("class_logits", "cls_logits"),
        ("reg_module", "reg_branch"), ("bboxes_delta", "box_delta")]]
COMMON_RULES: list[Rule] = [(r"decoder\.decoder_embedding\.", "decoder.stage_embedding.")]
DEPTHS = {6: 50, 23: 101}  # blocks of layer3 -> ResNet depth
QUERY_SETTINGS = {250: 100, 750: 300}  # coarse MLP outputs (5 x N1) -> MODEL.ASAG.NUM_QUERIES


def _tensor(state: dict[str, Tensor], name: str) -> Tensor:
    if name not in state:
        raise CheckpointError(f"the checkpoint has no {name}; is it an ASAG release?")
    return state[name]


def asag_settings(state: dict[str, Tensor], args: dict[str, Any], cfg: CfgNode
                  ) -> list[Setting]:
    """Architecture read from tensor shapes (and stored args) next to MODEL.* values."""
    a = cfg.MODEL.ASAG
    sparse = count_indexed(state, "decoder.head_series.") > 0
    heads = count_indexed(state, "decoder.head_series." if sparse else "decoder.bbox_head.")
    coarse = _tensor(state, "anchor_generator.proj_all.layers.2.weight")
    compress = _tensor(state, "anchor_generator.compress.0.2.weight")
    blocks = count_indexed(state, "backbone.0.body.layer3.")
    return [
        Setting("MODEL.ASAG.DECODER", "sparsercnn" if sparse else "adamixer", a.DECODER),
        Setting("MODEL.ASAG.NUM_DECODER_HEADS", heads, a.NUM_DECODER_HEADS),
        Setting("MODEL.ASAG.NUM_QUERIES", QUERY_SETTINGS.get(coarse.shape[0], coarse.shape[0]),
                a.NUM_QUERIES),
        Setting("MODEL.ASAG.HIDDEN_DIM", _tensor(state, "rpn.roi.weight").shape[0], a.HIDDEN_DIM),
        Setting("MODEL.ASAG.DIM_FEEDFORWARD",
                _tensor(state, "rpn.tokens_proj.layers.0.weight").shape[0], a.DIM_FEEDFORWARD),
        Setting("MODEL.ASAG.COMPRESS_DIM", compress.shape[0], a.COMPRESS_DIM),
        Setting("MODEL.ASAG.ANCHOR_HIDDEN_DIM", coarse.shape[1], a.ANCHOR_HIDDEN_DIM),
        Setting("MODEL.ASAG.NHEADS", _tensor(state, "rpn.iof_tau").shape[0], a.NHEADS),
        Setting("MODEL.BACKBONE.DEPTH", DEPTHS.get(blocks), cfg.MODEL.BACKBONE.DEPTH),
        Setting("MODEL.ASAG.IN_POINTS", args.get("in_points"), a.IN_POINTS),
        Setting("MODEL.ASAG.OUT_POINTS", args.get("out_points"), a.OUT_POINTS),
    ]


def _notes(args: dict[str, Any], cfg: CfgNode) -> list[str]:
    """What the stored training arguments say that the config may not follow."""
    a = cfg.MODEL.ASAG
    notes = ["backbone: FrozenBN of the release -> BatchNorm (num_batches_tracked set to 0); "
             "set MODEL.BACKBONE.NORM BN and NORM_EVAL True to fine-tune as the reference"]
    checks = [("used_head", "MODEL.ASAG.USED_HEAD", a.USED_HEAD),
              ("used_inference_level", "MODEL.ASAG.USED_INFERENCE_LEVEL",
               a.USED_INFERENCE_LEVEL),
              ("use_dn", "MODEL.ASAG.USE_DN", a.USE_DN)]
    for arg, key, value in checks:
        if arg in args and args[arg] != value:
            notes.append(f"trained with {arg} {args[arg]!r}; the config uses {key} {value!r}")
    return notes


def convert(state: dict[str, Tensor], extra: dict, cfg: CfgNode, options: Options,
            source: str) -> Conversion:
    """ASAG-A / ASAG-S / ASAG-A-dn (any query setting, R-50 / R-101) -> ours."""
    args = stored_args(extra)
    check_settings(asag_settings(state, args, cfg), source)
    num_classes = _tensor(state, "rpn.fc_cls.weight").shape[0]
    target = build_model(cfg, num_classes).state_dict()
    rules = (BACKBONE_RULES + ANCHOR_RULES + RPN_RULES + COMMON_RULES + ADAMIXER_RULES
             + SPARSERCNN_RULES)
    renamed, unmatched = rename(state, rules)
    return Conversion(match_state(renamed, target, source, unmatched), num_classes,
                      _notes(args, cfg))
