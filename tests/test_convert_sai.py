"""SAI converter: mmdetection-v1 checkpoints of SparseResNet Faster R-CNN -> ours (round trips,
class-agnostic regression, backbone only into FCOS, refusals).

`to_mmdet` writes the original's names from the mmdet v1 modules (SparseResNet backbone with
`conv{1,2}_sigma` / `conv{1,2}_gumbel.cur_T`, FPN `lateral_convs` / `fpn_convs` ConvModules,
RPNHead, SharedFCBBoxHead), not by inverting the converter's rules.
"""
import os
import re

import pytest
import torch
from conftest import REPO, randomized_detector

from fad.config import load_config
from fad.convert import Options, convert_checkpoint
from fad.errors import CheckpointError
from fad.modeling import build_detector

SAI_CFG = os.path.join(REPO, "configs", "sai", "tiny_synthetic.yaml")
FCOS_CFG = os.path.join(REPO, "configs", "fcos", "fcos_tiny_synthetic.yaml")
SMALL = ["MODEL.DEVICE", "cpu", "MODEL.FPN.OUT_CHANNELS", "16", "MODEL.SPARSE.SAMPLING",
         "deterministic"]
MMDET_NAMES = [  # ours -> mmdet v1
    (r"model\.backbone\.body\.(layer\d+\.\d+)\.interp([12])\.scale$", r"backbone.\1.conv\2_sigma"),
    (r"model\.backbone\.body\.(layer\d+\.\d+)\.sampler([12])\.temperature$",
     r"backbone.\1.conv\2_gumbel.cur_T"),
    (r"model\.backbone\.body\.", "backbone."),
    (r"model\.backbone\.fpn\.inner_blocks\.(\d+)\.0\.", r"neck.lateral_convs.\1.conv."),
    (r"model\.backbone\.fpn\.layer_blocks\.(\d+)\.0\.", r"neck.fpn_convs.\1.conv."),
    (r"model\.rpn\.head\.conv\.0\.0\.", "rpn_head.rpn_conv."),
    (r"model\.rpn\.head\.cls_logits\.", "rpn_head.rpn_cls."),
    (r"model\.rpn\.head\.bbox_pred\.", "rpn_head.rpn_reg."),
    (r"model\.roi_heads\.box_head\.fc6\.", "bbox_head.shared_fcs.0."),
    (r"model\.roi_heads\.box_head\.fc7\.", "bbox_head.shared_fcs.1."),
    (r"model\.roi_heads\.box_predictor\.cls_score\.", "bbox_head.fc_cls."),
    (r"model\.roi_heads\.box_predictor\.bbox_pred\.", "bbox_head.fc_reg."),
]


def randomized(cfg, num_classes):
    """Our model with random float tensors and BatchNorm counters 1234."""
    model = randomized_detector(cfg, num_classes)
    for name, t in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            t.fill_(1234)
    return model


def to_mmdet(state):
    """An mmdet v1 `state_dict` of our Faster R-CNN state (with `num_batches_tracked`)."""
    out = {}
    for name, value in state.items():
        for pattern, repl in MMDET_NAMES:
            if re.match(pattern, name):
                out[re.sub(pattern, repl, name, count=1)] = value.clone()
                break
        else:
            raise AssertionError(f"no mmdet name for {name}")
    if not any(k.endswith("num_batches_tracked") for k in out):  # a FrozenBN model of ours
        for key in [k for k in out if k.endswith("running_mean")]:
            out[key.replace("running_mean", "num_batches_tracked")] = torch.tensor(1234)
    return out


def save_release(path, state):
    torch.save({"meta": {"mmdet_version": "0.6.0+", "config": "model = dict(...)", "epoch": 12},
                "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}, path)
    return str(path)


def detections(model):
    torch.manual_seed(1)
    with torch.no_grad():
        return model([torch.rand(3, 96, 128), torch.rand(3, 64, 96)])


def test_round_trip_gives_identical_model(tmp_path):
    cfg = load_config(SAI_CFG, SMALL)
    model = randomized(cfg, 4)
    path = save_release(tmp_path / "sai.pth", to_mmdet(model.state_dict()))
    result = convert_checkpoint("sai", cfg, path)
    assert result.num_classes == 4 and any("+1 pixel" in n for n in result.notes)
    for k, v in model.state_dict().items():
        assert torch.equal(result.state[k], v), k
    converted = build_detector(cfg, 4)
    converted.load_state_dict(result.state, strict=True)
    for a, b in zip(detections(model), detections(converted.eval())):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(a[key], b[key]), key


def test_class_agnostic_regression_is_repeated(tmp_path):
    cfg = load_config(SAI_CFG, SMALL)
    model = randomized(cfg, 3)
    state = model.state_dict()
    reg = "model.roi_heads.box_predictor.bbox_pred"
    for part in ("weight", "bias"):
        block = state[f"{reg}.{part}"][:4].clone()
        state[f"{reg}.{part}"].copy_(block.repeat(4, *[1] * (block.dim() - 1)))
    original = to_mmdet(state)
    original["bbox_head.fc_reg.weight"] = original["bbox_head.fc_reg.weight"][:4]
    original["bbox_head.fc_reg.bias"] = original["bbox_head.fc_reg.bias"][:4]
    result = convert_checkpoint("sai", cfg, save_release(tmp_path / "sai.pth", original))
    assert torch.equal(result.state[f"{reg}.weight"], state[f"{reg}.weight"])
    assert any("class-agnostic" in n for n in result.notes)


def test_r50_dcn_frozen_bn_round_trip(tmp_path):
    """The release's layout: Bottleneck blocks, DCN offsets in res3-res5, frozen BN here."""
    overrides = ["MODEL.BACKBONE.DEPTH", "50", "MODEL.BACKBONE.NORM", "FrozenBN",
                 "MODEL.SPARSE.STAGE_WITH_DCN", "(False, True, True, True)"]
    cfg = load_config(SAI_CFG, SMALL + overrides)
    model = randomized(cfg, 2)
    original = to_mmdet(model.state_dict())
    assert "backbone.layer2.0.conv2_offset.weight" in original
    assert "backbone.layer1.0.bn3.num_batches_tracked" in original
    result = convert_checkpoint("sai", cfg, save_release(tmp_path / "sai.pth", original))
    assert result.state.keys() == model.state_dict().keys()
    with pytest.raises(CheckpointError, match="STAGE_WITH_DCN"):
        convert_checkpoint("sai", load_config(SAI_CFG, SMALL + overrides[:4]),
                           save_release(tmp_path / "sai.pth", original))


def test_backbone_only_loads_as_pretrained_body_of_fcos(tmp_path):
    cfg = load_config(SAI_CFG, SMALL)
    model = randomized(cfg, 4)
    path = save_release(tmp_path / "sai.pth", to_mmdet(model.state_dict()))
    fcos = ["MODEL.DEVICE", "cpu", "MODEL.BACKBONE.NAME", "sparse_resnet", "MODEL.BACKBONE.DEPTH",
            "18", "MODEL.BACKBONE.NORM", "FrozenBN", "MODEL.SPARSE.MASKED", "True",
            "MODEL.FPN.OUT_CHANNELS", "16", "MODEL.FCOS.NUM_CONVS", "1"]
    fcos_cfg = load_config(FCOS_CFG, fcos)
    result = convert_checkpoint("sai", fcos_cfg, path, Options(backbone_only=True))
    out = tmp_path / "body.pth"
    torch.save({"model": result.state}, out)
    detector = build_detector(load_config(FCOS_CFG, fcos + ["MODEL.BACKBONE.PRETRAINED",
                                                            str(out)]), 4)
    body = detector.backbone.body.state_dict()
    for k, v in model.model.backbone.body.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(body[k], v), k
    with pytest.raises(CheckpointError, match="backbone-only"):
        convert_checkpoint("deformable_detr", fcos_cfg, path, Options(backbone_only=True))


def _release(tmp_path, edit):
    cfg = load_config(SAI_CFG, SMALL)
    original = to_mmdet(randomized(cfg, 4).state_dict())
    edit(original)
    return cfg, save_release(tmp_path / "sai.pth", original)


@pytest.mark.parametrize("edit, pattern", [
    (lambda s: s.update({"neck.extra_conv.weight": torch.zeros(1)}),
     r"no place in the model: neck\.extra_conv\.weight"),
    (lambda s: s.pop("backbone.layer2.1.bn2.running_var"),
     r"not in .*backbone\.body\.layer2\.1\.bn2\.running_var"),
    (lambda s: s.update({"bbox_head.shared_fcs.1.weight": torch.zeros(8, 8)}),
     r"shape mismatch.*box_head\.fc7\.weight \(8, 8\)"),
    (lambda s: s.update({"backbone.layer1.0.conv2_sigma": torch.zeros(2)}),
     r"interp2\.scale"),
])
def test_bad_tensors_are_refused(tmp_path, edit, pattern):
    cfg, path = _release(tmp_path, edit)
    with pytest.raises(CheckpointError, match=pattern):
        convert_checkpoint("sai", cfg, path)


@pytest.mark.parametrize("overrides, key", [
    (["MODEL.BACKBONE.DEPTH", "34"], "MODEL.BACKBONE.DEPTH is 34 but the checkpoint has 18"),
    (["MODEL.SPARSE.MASKED", "False"], "MODEL.SPARSE.MASKED"),
    (["MODEL.FPN.OUT_CHANNELS", "32"], "MODEL.FPN.OUT_CHANNELS is 32"),
])
def test_config_that_disagrees_is_refused(tmp_path, overrides, key):
    _, path = _release(tmp_path, lambda s: None)
    with pytest.raises(CheckpointError, match=re.escape(key)):
        convert_checkpoint("sai", load_config(SAI_CFG, SMALL + overrides), path)


def test_wrong_file_layout_is_refused(tmp_path):
    path = tmp_path / "detr.pth"
    torch.save({"model": {"x": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="'state_dict'"):
        convert_checkpoint("sai", load_config(SAI_CFG, SMALL), str(path))
