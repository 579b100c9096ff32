"""ASAG converter: round trips through the reference naming (AdaMixer and SparseRCNN heads, 100
and 300 queries), leftovers and missing tensors named, a four-head release refused by a one-head
config, and the tool.

The reference checkpoints are made from our model by `to_reference`, written from the name
tables of docs/asag.md (ours -> reference; not by inverting the converter's rules), with the
reference's FrozenBN backbone (no `num_batches_tracked`) and the older torchvision FPN names.
"""
import argparse
import re

import pytest
import torch
from conftest import randomized_detector

from fad.cli.convert import main as convert_main
from fad.config import get_cfg_defaults
from fad.convert import convert_checkpoint
from fad.errors import CheckpointError
from fad.modeling import build_detector

TINY = ["MODEL.META_ARCHITECTURE", "ASAG", "MODEL.BACKBONE.DEPTH", 18, "MODEL.BACKBONE.NORM", "BN",
        "MODEL.BACKBONE.NORM_EVAL", True, "MODEL.ASAG.HIDDEN_DIM", 32, "MODEL.ASAG.NHEADS", 4,
        "MODEL.ASAG.DIM_FEEDFORWARD", 64, "MODEL.ASAG.ANCHOR_HIDDEN_DIM", 64,
        "MODEL.ASAG.IN_POINTS", 8, "MODEL.ASAG.OUT_POINTS", 16, "MODEL.ASAG.DYNAMIC_DIM", 8]
BRANCHES = [("cls_branch", "cls_fcs"), ("cls_logits", "fc_cls"), ("reg_branch", "reg_fcs"),
            ("box_delta", "fc_reg")]
OURS_TO_REFERENCE = [  # (pattern on our name, the reference's)
    (r"backbone\.body\.stem\.0\.", "backbone.0.body.conv1."),
    (r"backbone\.body\.stem\.1\.", "backbone.0.body.bn1."),
    (r"backbone\.body\.", "backbone.0.body."),
    (r"backbone\.fpn\.(inner|layer)_blocks\.(\d+)\.0\.", r"neck.\1_blocks.\2."),
    (r"anchor_generator\.p6\.", "anchor_generator.P6."),
    (r"anchor_generator\.coarse_norm\.", "anchor_generator.layernorm.0."),
    (r"anchor_generator\.patch_norms\.P4\.", "anchor_generator.layernorm.1."),
    (r"anchor_generator\.patch_norms\.P3\.", "anchor_generator.layernorm.2."),
    (r"anchor_generator\.coarse_pos$", "anchor_generator.pos_embedding.0.weight"),
    (r"anchor_generator\.patch_pos\.P4$", "anchor_generator.pos_embedding.1.weight"),
    (r"anchor_generator\.patch_pos\.P3$", "anchor_generator.pos_embedding.2.weight"),
    (r"anchor_generator\.coarse_mlp\.(\d)\.",
     lambda m: f"anchor_generator.proj_all.layers.{int(m.group(1)) // 2}."),
    (r"anchor_generator\.patch_mlp\.(\d)\.",
     lambda m: f"anchor_generator.proj_patch.layers.{int(m.group(1)) // 2}."),
    (r"relation\.roi_proj\.", "rpn.roi."), (r"relation\.roi_norm\.", "rpn.tokens_norm1."),
    (r"relation\.self_attn\.attn\.", "rpn.attn."), (r"relation\.self_attn\.iof_tau", "rpn.iof_tau"),
    (r"relation\.self_attn\.norm\.", "rpn.tokens_norm3."),
    (r"relation\.ffn\.0\.", "rpn.tokens_proj.layers.0."),
    (r"relation\.ffn\.2\.", "rpn.tokens_proj.layers.1."),
    (r"relation\.ffn_norm\.", "rpn.tokens_norm2."),
    *[(rf"relation\.{ours}\.", f"rpn.{ref}.") for ours, ref in BRANCHES],
    (r"decoder\.stage_embedding\.", "decoder.decoder_embedding."),
]
ADAMIXER = [
    (r"self_attn\.attn\.", "attention."), (r"self_attn\.iof_tau", "iof_tau"),
    (r"self_attn\.norm\.", "attention_norm."),
    (r"offset_generator\.", "sampling_n_mixing.sampling_offset_generator.0."),
    (r"mixing\.param_generator\.", "sampling_n_mixing.adaptive_mixing.parameter_generator.0."),
    (r"mixing\.out_proj\.", "sampling_n_mixing.adaptive_mixing.out_proj."),
    (r"mixing_norm\.", "sampling_n_mixing.norm."), (r"ffn\.0\.", "ffn.layers.0."),
    (r"ffn\.2\.", "ffn.layers.1."), (r"ffn_norm\.", "ffn_norm."),
    *[(rf"{ours}\.", f"{ref}.") for ours, ref in BRANCHES],
]
SPARSERCNN = [
    (r"self_attn\.", "self_attn."), (r"attn_norm\.", "norm1."),
    (r"dynamic_conv\.param_generator\.", "inst_interact.dynamic_layer."),
    (r"dynamic_conv\.norm1\.", "inst_interact.norm1."),
    (r"dynamic_conv\.norm2\.", "inst_interact.norm2."),
    (r"dynamic_conv\.out_proj\.", "inst_interact.out_layer."),
    (r"dynamic_conv\.out_norm\.", "inst_interact.norm3."), (r"conv_norm\.", "norm2."),
    (r"ffn\.0\.", "linear1."), (r"ffn\.2\.", "linear2."), (r"ffn_norm\.", "norm3."),
    (r"cls_branch\.", "cls_module."), (r"cls_logits\.", "class_logits."),
    (r"reg_branch\.", "reg_module."), (r"box_delta\.", "bboxes_delta."),
]


def tiny_cfg(*overrides):
    cfg = get_cfg_defaults()
    cfg.merge_from_list(TINY + list(overrides))
    return cfg


def to_reference(model, cfg):
    """The reference release's state dict of `model`."""
    heads = OURS_TO_REFERENCE_HEADS[cfg.MODEL.ASAG.DECODER]
    out = {}
    for name, value in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        match = re.match(r"decoder\.heads\.(\d+)\.(.*)", name)
        if match:
            k, rest = match.groups()
            for pattern, repl in heads[1]:
                if re.match(pattern, rest):
                    rest = re.sub(pattern, repl, rest, count=1)
                    break
            name = f"decoder.{heads[0]}.{k}.{rest}"
        else:
            for pattern, repl in OURS_TO_REFERENCE:
                if re.match(pattern, name):
                    name = re.sub(pattern, repl, name, count=1)
                    break
        out[name] = value.clone()
    return out


OURS_TO_REFERENCE_HEADS = {"adamixer": ("bbox_head", ADAMIXER),
                           "sparsercnn": ("head_series", SPARSERCNN)}


def save_release(path, state, **args):
    torch.save({"model": state, "args": argparse.Namespace(**args), "epoch": 11}, path)
    return str(path)


def _images():
    g = torch.Generator().manual_seed(0)
    return [torch.rand(3, 96, 128, generator=g), torch.rand(3, 120, 100, generator=g)]


@pytest.mark.parametrize("variant", [[], ["MODEL.ASAG.DECODER", "sparsercnn"],
                                     ["MODEL.ASAG.NUM_QUERIES", 300, "MODEL.ASAG.USED_HEAD",
                                      "aux_1"]], ids=["adamixer", "sparsercnn", "300q_aux_1"])
def test_round_trip_gives_identical_detections(variant, tmp_path):
    cfg = tiny_cfg(*variant)
    ours = randomized_detector(cfg, 3)
    reference = to_reference(ours, cfg)
    assert not any(k.startswith(("relation.", "decoder.heads.")) for k in reference)
    path = save_release(tmp_path / "release.pth", reference, used_head="main")
    result = convert_checkpoint("asag", cfg, path)
    assert result.num_classes == 3
    restored = build_detector(cfg, 3).eval()
    restored.load_state_dict(result.state, strict=True)
    with torch.no_grad():
        expected, got = ours(_images()), restored(_images())
    for e, g in zip(expected, got):
        assert torch.equal(e["labels"], g["labels"])
        torch.testing.assert_close(g["boxes"], e["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(g["scores"], e["scores"], atol=1e-4, rtol=0)
    assert any("num_batches_tracked" in n for n in result.notes)
    used_note = [n for n in result.notes if "used_head" in n]
    assert bool(used_note) == ("aux_1" in variant)


def test_leftovers_and_missing_tensors_are_named(tmp_path):
    cfg = tiny_cfg()
    reference = to_reference(randomized_detector(cfg, 3), cfg)
    extra = dict(reference, **{"query_pattern.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"no place in the model: query_pattern\.weight"):
        convert_checkpoint("asag", cfg, save_release(tmp_path / "a.pth", extra))
    missing = {k: v for k, v in reference.items() if k != "rpn.tokens_norm2.weight"}
    with pytest.raises(CheckpointError, match=r"not in .*relation\.ffn_norm\.weight"):
        convert_checkpoint("asag", cfg, save_release(tmp_path / "b.pth", missing))


def test_settings_that_do_not_fit_the_config_are_refused(tmp_path):
    four = tiny_cfg()
    path = save_release(tmp_path / "four.pth", to_reference(randomized_detector(four, 3), four))
    with pytest.raises(CheckpointError, match="MODEL.ASAG.NUM_DECODER_HEADS is 1 but the "
                                              "checkpoint has 4"):
        convert_checkpoint("asag", tiny_cfg("MODEL.ASAG.NUM_DECODER_HEADS", 1), path)
    with pytest.raises(CheckpointError, match="MODEL.ASAG.DECODER is sparsercnn but the "
                                              "checkpoint has adamixer; MODEL.ASAG.NUM_QUERIES"):
        convert_checkpoint("asag", tiny_cfg("MODEL.ASAG.NUM_QUERIES", 300,
                                            "MODEL.ASAG.DECODER", "sparsercnn"), path)


def test_tool_writes_a_checkpoint_that_loads(tmp_path, capsys):
    cfg = tiny_cfg()
    path = save_release(tmp_path / "in.pth", to_reference(randomized_detector(cfg, 3), cfg))
    opts = [str(x) for x in TINY]
    convert_main(["asag", path, str(tmp_path / "out.pth"), *opts])
    assert "wrote" in capsys.readouterr().out
    state = torch.load(tmp_path / "out.pth", weights_only=True)["model"]
    build_detector(cfg, 3).load_state_dict(state, strict=True)
