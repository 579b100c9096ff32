"""Deformable / Sparse DETR converters: round trips through the original naming, refusals, and a
converted checkpoint evaluated by tools/test_net.py.

The original checkpoints are made from our model by `to_original`, written here from the
original code's names (not by inverting the converter's rules): heads as one list per variant,
the decoder's / encoder's views of that list (aliases), FrozenBN without `num_batches_tracked`.
"""
import argparse
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import REPO, randomized_detector

from fad.config import load_config
from fad.convert import Options, convert_checkpoint
from fad.convert.common import COCO_CATEGORY_IDS
from fad.data.synthetic import CLASSES
from fad.errors import CheckpointError
from fad.modeling import build_detector

DETR_CFG = os.path.join(REPO, "configs", "deformable_detr", "tiny_synthetic.yaml")
SPARSE_CFG = os.path.join(REPO, "configs", "sparse_detr", "tiny_synthetic.yaml")
SMALL = ["MODEL.DEVICE", "cpu", "MODEL.DETR.ENC_LAYERS", "2", "MODEL.DETR.DEC_LAYERS", "2",
         "MODEL.DETR.D_MODEL", "32", "MODEL.DETR.GN_GROUPS", "8", "MODEL.DETR.NHEADS", "2",
         "MODEL.DETR.DIM_FEEDFORWARD", "32", "MODEL.DETR.NUM_QUERIES", "12",
         "MODEL.DETR.DETECTIONS_PER_IMG", "10"]
VARIANTS = {  # name -> (config, overrides)
    "plain": (DETR_CFG, ["MODEL.DETR.WITH_BOX_REFINE", "False", "MODEL.DETR.TWO_STAGE", "False"]),
    "refine": (DETR_CFG, ["MODEL.DETR.WITH_BOX_REFINE", "True", "MODEL.DETR.TWO_STAGE", "False"]),
    "two_stage": (DETR_CFG, ["MODEL.DETR.WITH_BOX_REFINE", "False", "MODEL.DETR.TWO_STAGE",
                             "True"]),
    "refine_two_stage": (DETR_CFG, []),
    "sparse": (SPARSE_CFG, []),
    "sparse_plain_heads": (SPARSE_CFG, ["MODEL.DETR.USE_ENC_AUX_LOSS", "False",
                                        "MODEL.DETR.EFF_QUERY_INIT", "False",
                                        "MODEL.DETR.EFF_SPECIFIC_HEAD", "False"]),
}
# our name -> the original's (encoder / decoder layer internals, backbone, top-level parts)
LAYER_NAMES = [
    (r"transformer\.encoder\.layers\.(\d+)\.norm\.", r"transformer.encoder.layers.\1.norm1."),
    (r"transformer\.encoder\.layers\.(\d+)\.ffn\.norm\.", r"transformer.encoder.layers.\1.norm2."),
    (r"transformer\.decoder\.layers\.(\d+)\.norm1\.", r"transformer.decoder.layers.\1.norm2."),
    (r"transformer\.decoder\.layers\.(\d+)\.norm2\.", r"transformer.decoder.layers.\1.norm1."),
    (r"transformer\.decoder\.layers\.(\d+)\.ffn\.norm\.", r"transformer.decoder.layers.\1.norm3."),
    (r"transformer\.(en|de)coder\.layers\.(\d+)\.ffn\.", r"transformer.\1coder.layers.\2."),
    (r"transformer\.query_embed\.", "query_embed."),
    (r"transformer\.scoring\.", "transformer.enc_mask_predictor."),
    (r"backbone\.input_proj\.", "input_proj."),
    (r"backbone\.body\.stem\.0\.", "backbone.0.body.conv1."),
    (r"backbone\.body\.stem\.1\.", "backbone.0.body.bn1."),
    (r"backbone\.body\.", "backbone.0.body."),
]


def tiny_cfg(variant, *extra):
    path, overrides = VARIANTS[variant]
    return load_config(path, SMALL + overrides + list(extra))


def randomized(cfg, num_classes):
    """Our model with every float tensor random (so swapped or dropped tensors show)."""
    model = randomized_detector(cfg, num_classes, std=0.2)
    d = cfg.MODEL.DETR
    if d.TWO_STAGE and not d.WITH_BOX_REFINE:  # the original shares these with the decoder head
        model.heads.enc_class.load_state_dict(model.heads.class_embed[0].state_dict())
        model.heads.enc_bbox.load_state_dict(model.heads.bbox_embed[0].state_dict())
    return model


def head_list(cfg):
    """Our head of each entry of the original's class_embed / bbox_embed lists."""
    d = cfg.MODEL.DETR
    entries = [i if d.WITH_BOX_REFINE else 0 for i in range(d.DEC_LAYERS)]
    entries = [(f"heads.class_embed.{i}", f"heads.bbox_embed.{i}") for i in entries]
    if d.TWO_STAGE:
        entries.append(("heads.enc_class", "heads.enc_bbox"))
    if d.USE_ENC_AUX_LOSS:
        entries += [(f"heads.enc_aux_class.{j}", f"heads.enc_aux_bbox.{j}")
                    for j in range(d.ENC_LAYERS - 1)]
    return entries


def to_original(model, cfg, sparse, coco91=False):
    """The original release's state dict of `model` (FrozenBN backbone, heads as lists)."""
    d = cfg.MODEL.DETR
    ours = {k: v.clone() for k, v in model.state_dict().items()
            if not k.endswith("num_batches_tracked")}
    out = {}
    for name, value in ours.items():
        if name.startswith("heads."):
            continue
        for pattern, repl in LAYER_NAMES:
            if re.match(pattern, name):
                name = re.sub(pattern, repl, name, count=1)
                break
        out[name] = value
    entries = head_list(cfg)
    for i, (cls, box) in enumerate(entries):
        for part in ("weight", "bias"):
            value = ours[f"{cls}.{part}"]
            if coco91:
                rows = COCO_CATEGORY_IDS
                if cls == "heads.enc_class" and not d.EFF_SPECIFIC_HEAD:
                    rows = (0,) + COCO_CATEGORY_IDS[1:]
                full = torch.randn((91,) + value.shape[1:])
                full[list(rows)] = value
                value = full
            out[f"class_embed.{i}.{part}"] = value
        for key in [k for k in ours if k.startswith(box + ".")]:
            out[f"bbox_embed.{i}." + key[len(box) + 1:]] = ours[key]
    if coco91:  # entries sharing one head in the original share the 91 rows too
        for i, (cls, _) in enumerate(entries):
            first = next(j for j, (c, _) in enumerate(entries) if c == cls)
            for part in ("weight", "bias"):
                out[f"class_embed.{i}.{part}"] = out[f"class_embed.{first}.{part}"]
    views = []  # (owner list entries, alias prefix)
    if d.TWO_STAGE:
        views.append(("class_embed", "transformer.decoder.class_embed"))
    if d.WITH_BOX_REFINE or (sparse and d.TWO_STAGE):
        views.append(("bbox_embed", "transformer.decoder.bbox_embed"))
    for owner, alias in views:
        for key in [k for k in out if k.startswith(owner + ".")]:
            out[alias + key[len(owner):]] = out[key]
    if d.USE_ENC_AUX_LOSS:
        first = len(entries) - (d.ENC_LAYERS - 1)
        for owner in ("class_embed", "bbox_embed"):
            for key in [k for k in out if re.match(rf"{owner}\.\d+\.", k)]:
                index = int(key.split(".")[1])
                if index >= first:
                    rest = key.split(".", 2)[2]
                    out[f"transformer.encoder.{owner}.{index - first}.{rest}"] = out[key]
    return out


def release_args(cfg, sparse):
    d = cfg.MODEL.DETR
    args = dict(num_queries=d.NUM_QUERIES, nheads=d.NHEADS, enc_n_points=d.ENC_N_POINTS,
                dec_n_points=d.DEC_N_POINTS, two_stage=d.TWO_STAGE,
                with_box_refine=d.WITH_BOX_REFINE)
    if sparse:
        args.update(rho=d.RHO, use_enc_aux_loss=d.USE_ENC_AUX_LOSS,
                    eff_query_init=d.EFF_QUERY_INIT, eff_specific_head=d.EFF_SPECIFIC_HEAD)
    return argparse.Namespace(**args)


def save_release(path, state, args=None):
    obj = {"model": state, "epoch": 49, "optimizer": {"state": {}, "param_groups": []}}
    if args is not None:
        obj["args"] = args
    torch.save(obj, path)
    return str(path)


def images():
    torch.manual_seed(1)
    return [torch.rand(3, 96, 128), torch.rand(3, 80, 112)]


def assert_same_outputs(a, b):
    with torch.no_grad():
        out_a, out_b = a(images()), b(images())
    for x, y in zip(out_a, out_b):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(x[key], y[key]), key


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_round_trip_gives_identical_model(variant, tmp_path):
    cfg = tiny_cfg(variant)
    sparse = variant.startswith("sparse")
    model = randomized(cfg, 5)
    original = to_original(model, cfg, sparse)
    kind = "sparse_detr" if sparse else "deformable_detr"
    args = release_args(cfg, sparse) if variant != "refine" else None  # one file without args
    result = convert_checkpoint(kind, cfg, save_release(tmp_path / "in.pth", original, args))
    assert result.num_classes == 5
    ours = model.state_dict()
    assert result.state.keys() == ours.keys()
    for k, v in ours.items():
        assert torch.equal(result.state[k], v), k
    converted = build_detector(cfg, 5)
    converted.load_state_dict(result.state, strict=True)
    assert_same_outputs(model, converted.eval())


@pytest.mark.parametrize("variant", ["two_stage", "sparse"])
def test_coco_category_id_heads_keep_the_80_used_rows(variant, tmp_path):
    cfg = tiny_cfg(variant)
    sparse = variant == "sparse"
    model = randomized(cfg, 80)
    original = to_original(model, cfg, sparse, coco91=True)
    path = save_release(tmp_path / "in.pth", original, release_args(cfg, sparse))
    result = convert_checkpoint("sparse_detr" if sparse else "deformable_detr", cfg, path)
    assert result.num_classes == 80 and any("category id" in n for n in result.notes)
    for k, v in model.state_dict().items():
        assert torch.equal(result.state[k], v), k
    kept = convert_checkpoint("sparse_detr" if sparse else "deformable_detr", cfg, path,
                              Options(class_logits="as_is"))
    assert kept.num_classes == 91 and kept.state["heads.class_embed.0.weight"].shape[0] == 91


def _release(tmp_path, variant="refine_two_stage", edit=None, args=True):
    cfg = tiny_cfg(variant)
    original = to_original(randomized(cfg, 3), cfg, sparse=False)
    if edit:
        edit(original)
    return cfg, save_release(tmp_path / "in.pth", original,
                             release_args(cfg, False) if args else None)


def test_leftover_tensor_is_refused(tmp_path):
    cfg, path = _release(tmp_path, edit=lambda s: s.update({"transformer.extra.weight":
                                                            torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"transformer\.extra\.weight"):
        convert_checkpoint("deformable_detr", cfg, path)


def test_missing_tensor_is_refused(tmp_path):
    cfg, path = _release(tmp_path, edit=lambda s: s.pop("transformer.decoder.layers.1.norm3.bias"))
    with pytest.raises(CheckpointError, match=r"not in .*decoder\.layers\.1\.ffn\.norm\.bias"):
        convert_checkpoint("deformable_detr", cfg, path)


def test_shape_mismatch_is_refused(tmp_path):
    cfg, path = _release(tmp_path, edit=lambda s: s.update(
        {"input_proj.0.0.weight": torch.zeros(32, 7, 1, 1)}))
    with pytest.raises(CheckpointError, match=r"shape mismatch.*input_proj\.0\.0\.weight"):
        convert_checkpoint("deformable_detr", cfg, path)


def test_edited_alias_is_refused(tmp_path):
    def edit(state):
        state["transformer.decoder.bbox_embed.1.layers.0.bias"] = torch.zeros(32)
    cfg, path = _release(tmp_path, edit=edit)
    with pytest.raises(CheckpointError, match=r"differ.*decoder\.bbox_embed\.1\.layers\.0\.bias"):
        convert_checkpoint("deformable_detr", cfg, path)


@pytest.mark.parametrize("overrides, key", [
    (["MODEL.DETR.NUM_QUERIES", "20"], "MODEL.DETR.NUM_QUERIES"),
    (["MODEL.DETR.TWO_STAGE", "False"], "MODEL.DETR.TWO_STAGE"),
    (["MODEL.DETR.WITH_BOX_REFINE", "False"], "MODEL.DETR.WITH_BOX_REFINE"),
    (["MODEL.DETR.NUM_FEATURE_LEVELS", "2"], "MODEL.DETR.NUM_FEATURE_LEVELS"),
])
def test_config_that_disagrees_is_refused(overrides, key, tmp_path):
    _, path = _release(tmp_path)
    with pytest.raises(CheckpointError, match=re.escape(key)):
        convert_checkpoint("deformable_detr", tiny_cfg("refine_two_stage", *overrides), path)


def test_single_stage_queries_come_from_the_tensors(tmp_path):
    _, path = _release(tmp_path, variant="plain", args=False)
    with pytest.raises(CheckpointError, match="NUM_QUERIES is 20 but the checkpoint has 12"):
        convert_checkpoint("deformable_detr", tiny_cfg("plain", "MODEL.DETR.NUM_QUERIES", "20"),
                           path)


def test_sparse_heads_and_rho(tmp_path):
    cfg = tiny_cfg("sparse")
    original = to_original(randomized(cfg, 3), cfg, sparse=True)
    path = save_release(tmp_path / "in.pth", original, release_args(cfg, True))
    with pytest.raises(CheckpointError, match="USE_ENC_AUX_LOSS.*EFF_QUERY_INIT"):
        convert_checkpoint("sparse_detr", tiny_cfg("sparse", "MODEL.DETR.USE_ENC_AUX_LOSS",
                                                   "False", "MODEL.DETR.EFF_QUERY_INIT",
                                                   "False"), path)
    with pytest.raises(CheckpointError, match="RHO > 0"):
        convert_checkpoint("sparse_detr", tiny_cfg("refine_two_stage"), path)
    with pytest.raises(CheckpointError, match="enc_mask_predictor"):
        convert_checkpoint("deformable_detr", cfg, path)
    result = convert_checkpoint("sparse_detr", tiny_cfg("sparse", "MODEL.DETR.RHO", "0.5"), path)
    assert any("rho 0.3" in note for note in result.notes)


@pytest.mark.slow
def test_tool_converts_then_test_net_evaluates(synthetic_root, tmp_path):
    overrides = SMALL + ["DATASETS.ROOT", synthetic_root, "OUTPUT_DIR", str(tmp_path),
                         "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128"]
    cfg = load_config(DETR_CFG, overrides)
    original = to_original(randomized(cfg, len(CLASSES)), cfg, sparse=False)
    path = save_release(tmp_path / "release.pth", original, release_args(cfg, False))
    out = str(tmp_path / "converted.pth")

    def tool(name, *args):
        return subprocess.run([sys.executable, os.path.join(REPO, "tools", name), *args],
                              capture_output=True, text=True, cwd=REPO)

    run = tool("convert_checkpoint.py", "deformable_detr", "--config-file", DETR_CFG, path, out,
               *overrides)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"wrote {out}" in run.stdout and set(torch.load(out)) == {"model"}
    run = tool("test_net.py", "--config-file", DETR_CFG, "MODEL.WEIGHT", out, *overrides)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "inference" / "synthetic_coco_val" / "metrics.json").is_file()
    run = tool("convert_checkpoint.py", "deformable_detr", "--config-file", DETR_CFG, path, out,
               *overrides, "MODEL.DETR.NUM_QUERIES", "20")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.startswith("error:") and "MODEL.DETR.NUM_QUERIES" in run.stderr
