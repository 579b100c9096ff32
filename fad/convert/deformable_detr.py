"""Deformable DETR release (fundamentalvision/Deformable-DETR) -> our DeformableDETR.

The release stores `{"model": state_dict, "args": Namespace, ...}`; the variants (plain, +
iterative box refinement, + two-stage) differ in their heads:

- `class_embed.i` / `bbox_embed.i`, i < D (decoder layers): one head per decoder layer. Without
  box refinement all entries are one shared module (saved D times: aliases of entry 0); ours
  keeps one head (`heads.class_embed.0`). With refinement they are separate, and the decoder
  sees them again as `transformer.decoder.bbox_embed.i` (aliases).
- two-stage adds entry D, the proposal head (`heads.enc_class` / `heads.enc_bbox` here), and
  the decoder sees every class head again as `transformer.decoder.class_embed.i`.

Renames: the backbone `backbone.0.body.{conv1,bn1,layerN}` -> `backbone.body.{stem.0,stem.1,
layerN}`, `input_proj` -> `backbone.input_proj`, `query_embed` -> `transformer.query_embed`;
encoder layers `norm1, linear1, linear2, norm2` -> `norm, ffn.linear1, ffn.linear2, ffn.norm`;
decoder layers `norm2` (after self-attention) -> `norm1`, `norm1` (after cross-attention) ->
`norm2`, `linear1, linear2, norm3` -> `ffn.*`; attention modules keep their names.

Class heads of the COCO release have 91 logits indexed by category id; see `common.Options`.
`sparse_detr.py` extends this with the scoring network and the encoder's auxiliary heads.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

from torch import Tensor
from yacs.config import CfgNode

from fad.errors import CheckpointError

from .common import (
    COCO_CATEGORY_IDS,
    Conversion,
    Options,
    Rule,
    Setting,
    build_model,
    check_settings,
    coco_id_layout,
    count_indexed,
    drop_aliases,
    match_state,
    rename,
    select_rows,
    stored_args,
)

STATE_KEY = "model"  # where the release file keeps its state dict
TRANSFORMER_RULES: list[Rule] = [
    (r"transformer\.encoder\.layers\.(\d+)\.norm1\.", r"transformer.encoder.layers.\1.norm."),
    (r"transformer\.encoder\.layers\.(\d+)\.norm2\.", r"transformer.encoder.layers.\1.ffn.norm."),
    (r"transformer\.decoder\.layers\.(\d+)\.norm1\.", r"transformer.decoder.layers.\1.norm2."),
    (r"transformer\.decoder\.layers\.(\d+)\.norm2\.", r"transformer.decoder.layers.\1.norm1."),
    (r"transformer\.decoder\.layers\.(\d+)\.norm3\.", r"transformer.decoder.layers.\1.ffn.norm."),
    (r"transformer\.(en|de)coder\.layers\.(\d+)\.linear([12])\.",
     r"transformer.\1coder.layers.\2.ffn.linear\3."),
    (r"transformer\.(en|de)coder\.layers\.(\d+)\.(self_attn|cross_attn)\.",
     r"transformer.\1coder.layers.\2.\3."),
    (r"transformer\.(level_embed|enc_output_norm|enc_output|pos_trans_norm|pos_trans"
     r"|reference_points)(?=\.|$)", r"transformer.\1"),
    (r"query_embed\.", "transformer.query_embed."),
    (r"input_proj\.", "backbone.input_proj."),
]


@dataclass(frozen=True)
class HeadLayout:
    """Which original head entry serves what.

    Attributes:
        num_heads: entries of `class_embed` (= of `bbox_embed`).
        num_decoder: decoder layers D (entries 0..D-1).
        two_stage: entry D is the proposal head.
        refine: the decoder refines boxes with `bbox_embed[i]` (iterative box refinement).
        num_enc_aux: entries after those, one per encoder layer but the last (Sparse DETR).
    """

    num_heads: int
    num_decoder: int
    two_stage: bool
    refine: bool

    @property
    def num_enc_aux(self) -> int:
        return self.num_heads - self.num_decoder - int(self.two_stage)

    def target(self, index: int) -> tuple[str, str] | None:
        """Our (class head, box head) names for entry `index`; None: an alias of entry 0."""
        if index < self.num_decoder:
            if index > 0 and not self.refine:
                return None
            return f"heads.class_embed.{index}", f"heads.bbox_embed.{index}"
        if self.two_stage and index == self.num_decoder:
            return "heads.enc_class", "heads.enc_bbox"
        aux = index - self.num_decoder - int(self.two_stage)
        return f"heads.enc_aux_class.{aux}", f"heads.enc_aux_bbox.{aux}"


def head_layout(state: dict[str, Tensor]) -> HeadLayout:
    """The head layout of an original state dict (before aliases are dropped)."""
    layout = HeadLayout(num_heads=count_indexed(state, "class_embed."),
                        num_decoder=count_indexed(state, "transformer.decoder.layers."),
                        two_stage="transformer.enc_output.weight" in state,
                        refine=count_indexed(state, "transformer.decoder.bbox_embed.") > 0)
    if layout.num_heads < layout.num_decoder + int(layout.two_stage) or layout.num_decoder == 0:
        raise CheckpointError(f"the checkpoint has {layout.num_heads} class heads for "
                              f"{layout.num_decoder} decoder layers; is it a DETR-family release?")
    return layout


def _alias_of(layout: HeadLayout, num_encoder: int) -> Callable[[str], str | None]:
    """Canonical name of an alias: the decoder's / encoder's views of the head list and, without
    box refinement, the repeated decoder-layer entries of the one shared head."""
    view = re.compile(r"transformer\.(decoder|encoder)\.(class|bbox)_embed\.(\d+)\.(.*)")
    entry = re.compile(r"(class|bbox)_embed\.(\d+)\.(.*)")
    first_aux = layout.num_heads - (num_encoder - 1)

    def canonical(name: str) -> str | None:
        match = view.fullmatch(name)
        if match:
            part, kind, index, rest = match.groups()
            index = int(index) + (first_aux if part == "encoder" else 0)
            return f"{kind}_embed.{index}.{rest}"
        match = entry.fullmatch(name)
        if match and not layout.refine and 0 < int(match.group(2)) < layout.num_decoder:
            return f"{match.group(1)}_embed.0.{match.group(3)}"
        return None

    return canonical


def _check_shared_heads(state: dict[str, Tensor], layout: HeadLayout) -> None:
    """Without refinement ours has one decoder head: the original's must be one shared module."""
    if layout.refine:
        return
    own = [k for k in state if re.match(r"(class|bbox)_embed\.(\d+)\.", k)
           and 0 < int(k.split(".")[1]) < layout.num_decoder]
    if any(not state[k].equal(state[re.sub(r"_embed\.\d+\.", "_embed.0.", k, count=1)])
           for k in own):
        raise CheckpointError("the checkpoint has a separate head per decoder layer but no box "
                              "refinement, which our model cannot express; set "
                              "MODEL.DETR.WITH_BOX_REFINE True only if the original refined "
                              "boxes, else this release is not supported")


def _head_rules(layout: HeadLayout) -> list[Rule]:
    rules = []
    for index in range(layout.num_heads):
        names = layout.target(index)
        if names is not None:
            rules += [(rf"class_embed\.{index}\.", names[0] + "."),
                      (rf"bbox_embed\.{index}\.", names[1] + ".")]
    return rules


def _body_rules(target: dict[str, Tensor]) -> list[Rule]:
    """`backbone.0.body.*` onto our body (ResNet stem as `stem.0` / `stem.1` where it has one)."""
    if "backbone.body.stem.0.weight" in target:
        return [(r"backbone\.0\.body\.conv1\.", "backbone.body.stem.0."),
                (r"backbone\.0\.body\.bn1\.", "backbone.body.stem.1."),
                (r"backbone\.0\.body\.", "backbone.body.")]
    return [(r"backbone\.0\.body\.", "backbone.body.")]


def detr_settings(state: dict[str, Tensor], args: dict[str, Any], cfg: CfgNode,
                  layout: HeadLayout) -> list[Setting]:
    """Architecture read from tensor shapes (and stored args) next to MODEL.DETR.* values."""
    d = cfg.MODEL.DETR
    level_embed = state.get("transformer.level_embed")
    if level_embed is None or level_embed.dim() != 2:
        raise CheckpointError("the checkpoint has no transformer.level_embed; is it a "
                              "DETR-family release?")
    ffn = state.get("transformer.encoder.layers.0.linear1.weight")
    queries = state.get("query_embed.weight")
    settings = [
        Setting("MODEL.DETR.D_MODEL", level_embed.shape[1], d.D_MODEL),
        Setting("MODEL.DETR.NUM_FEATURE_LEVELS", level_embed.shape[0], d.NUM_FEATURE_LEVELS),
        Setting("MODEL.DETR.ENC_LAYERS", count_indexed(state, "transformer.encoder.layers."),
                d.ENC_LAYERS),
        Setting("MODEL.DETR.DEC_LAYERS", layout.num_decoder, d.DEC_LAYERS),
        Setting("MODEL.DETR.DIM_FEEDFORWARD", None if ffn is None else ffn.shape[0],
                d.DIM_FEEDFORWARD),
        Setting("MODEL.DETR.TWO_STAGE", layout.two_stage, d.TWO_STAGE),
        Setting("MODEL.DETR.WITH_BOX_REFINE", layout.refine, d.WITH_BOX_REFINE),
        Setting("MODEL.DETR.NUM_QUERIES",
                queries.shape[0] if queries is not None else args.get("num_queries"),
                d.NUM_QUERIES),
        Setting("MODEL.DETR.NHEADS", args.get("nheads"), d.NHEADS),
        Setting("MODEL.DETR.ENC_N_POINTS", args.get("enc_n_points"), d.ENC_N_POINTS),
        Setting("MODEL.DETR.DEC_N_POINTS", args.get("dec_n_points"), d.DEC_N_POINTS),
        Setting("MODEL.DETR.RHO > 0", "transformer.enc_mask_predictor.layer1.0.weight" in state,
                d.RHO > 0),
        Setting("MODEL.DETR.USE_ENC_AUX_LOSS", layout.num_enc_aux > 0, d.USE_ENC_AUX_LOSS),
    ]
    if layout.two_stage:
        pos_trans = state["transformer.pos_trans.weight"]
        settings += [
            Setting("MODEL.DETR.EFF_QUERY_INIT", pos_trans.shape[0] == level_embed.shape[1],
                    d.EFF_QUERY_INIT),
            Setting("MODEL.DETR.EFF_SPECIFIC_HEAD",  # only in stored args (no own tensors)
                    args.get("eff_specific_head", False if args else None), d.EFF_SPECIFIC_HEAD)]
    return settings


def _class_rows(state: dict[str, Tensor], layout: HeadLayout, cfg: CfgNode) -> list[str]:
    """Keep the rows of COCO's 80 category ids in every class head; returns notes."""
    for index in range(layout.num_heads):
        names = layout.target(index)
        if names is None:
            continue
        rows: Sequence[int] = COCO_CATEGORY_IDS
        if names[0] == "heads.enc_class" and not cfg.MODEL.DETR.EFF_SPECIFIC_HEAD:
            rows = (0,) + COCO_CATEGORY_IDS[1:]  # binary proposal head: objectness is logit 0
        select_rows(state, names[0], rows)
    notes = ["class heads: 91 logits indexed by COCO category id -> the 80 rows of the used ids, "
             "in category-id order (fad.data's label order); scores of the 11 unused ids are "
             "gone (they were trained as negatives everywhere)"]
    if layout.two_stage and not cfg.MODEL.DETR.EFF_SPECIFIC_HEAD:
        notes.append("proposal head: logit 0 (the original's objectness) stays first; the other "
                     "rows are unused by a binary proposal head")
    return notes


def convert_detr(state: dict[str, Tensor], extra: dict, cfg: CfgNode, options: Options,
                 source: str, extra_rules: Sequence[Rule] = ()) -> Conversion:
    """Convert a Deformable-DETR-family state dict (also Sparse DETR via `extra_rules`)."""
    args = stored_args(extra)
    layout = head_layout(state)
    num_encoder = count_indexed(state, "transformer.encoder.layers.")
    check_settings(detr_settings(state, args, cfg, layout), source)
    _check_shared_heads(state, layout)
    state, num_aliases = drop_aliases(state, _alias_of(layout, num_encoder))
    num_logits = state["class_embed.0.weight"].shape[0]
    coco = coco_id_layout(num_logits, options)
    num_classes = len(COCO_CATEGORY_IDS) if coco else num_logits
    model = build_model(cfg, num_classes)
    target = model.state_dict()
    rules = _body_rules(target) + TRANSFORMER_RULES + list(extra_rules) + _head_rules(layout)
    renamed, unmatched = rename(state, rules)
    notes = [f"dropped {num_aliases} aliases (names of shared head tensors)"] if num_aliases \
        else []
    if coco:
        notes += _class_rows(renamed, layout, cfg)
    if layout.two_stage and not layout.refine:
        notes.append("the proposal head shares the decoder head's weights in the original; here "
                     "it is a copy (same outputs; fine-tuning trains them apart)")
    if layout.two_stage and "num_queries" not in args:
        notes.append("number of queries: not stored in the checkpoint (no args); using "
                     f"MODEL.DETR.NUM_QUERIES {cfg.MODEL.DETR.NUM_QUERIES}")
    return Conversion(match_state(renamed, target, source, unmatched), num_classes, notes)


def convert(state: dict[str, Tensor], extra: dict, cfg: CfgNode, options: Options,
            source: str) -> Conversion:
    """Deformable DETR (plain, + box refinement, + two-stage) -> ours."""
    return convert_detr(state, extra, cfg, options, source)
