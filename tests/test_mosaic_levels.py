"""SOLVER.MOSAIC_HEAD_LEVELS: an FCOS head's levels packed into one map (`fad.modeling.fcos.
mosaic`) give the per-level loop's outputs and gradients (searched heads with std, separable
and dilated units, the plain head); the layout keeps the levels apart by the gap and its runs
name each position's level; a detector step with it equals one without; the heads it cannot
run, and where it stands aside (FLOP counting)."""
import os

import pytest
import torch
from conftest import REPO, head_grads, tiny_fcos_cfg, two_image_batch
from torch.utils.flop_counter import FlopCounterMode

from fad.config import get_cfg_defaults
from fad.engine import amp as amp_module
from fad.engine.trainer import DetectorStep, prepare_layers
from fad.errors import ConfigError
from fad.modeling import build_detector
from fad.modeling.fcos import build_fad_head
from fad.modeling.fcos.head import FCOSHead
from fad.modeling.fcos.mosaic import (
    enable_mosaic_levels,
    mosaic_applies,
    pack,
    plan_mosaic,
    unpack,
)
from fad.nas.genotype import Genotype

PAPER = os.path.join(REPO, "configs", "fad", "genotypes", "fad_paper.log")
SIZES = ((20, 24), (10, 12), (5, 6), (3, 3), (2, 2))
# every unit kind: std and sinSep chains of 1-3, dilation-2 and dilation-3 separable units
BOX = Genotype(normal=[[("sinSep_conv_3x3_x2", 1), ("std_conv_3x3_x3", 0)],
                       [("std_conv_3x3+dil_conv_3x3_r3", 2), ("sinSep_conv_3x3", 0)],
                       [("std_conv_3x3_x2", 1), ("std_conv_3x3", 3)]],
               normal_concat=range(2, 5))
CLS = Genotype(normal=[[("std_conv_3x3_x2+dil_conv_3x3", 0), ("sinSep_conv_3x3+dil_conv_3x3", 1)],
                       [("sinSep_conv_3x3_x3", 1), ("std_conv_3x3_x2", 2)],
                       [("sinSep_conv_3x3_x2+dil_conv_3x3", 3), ("std_conv_3x3", 0)]],
               normal_concat=range(2, 5))


PORTRAIT = ((24, 20), (12, 10), (6, 5), (3, 3), (2, 1))


@pytest.mark.parametrize("sizes,gap", [(SIZES, 2), (PORTRAIT, 3), (((7, 9),), 1),
                                       (((8, 8), (4, 4)), 1)])
def test_the_layout_keeps_the_levels_apart_and_its_runs_name_each_position(sizes, gap):
    mosaic = plan_mosaic(sizes, gap)
    owner = torch.full((mosaic.height, mosaic.width), -1)
    for level, ((y, x, h, w), size) in enumerate(zip(mosaic.boxes, sizes)):
        assert (h, w) == size and y >= 0 and x >= 0
        assert y + h <= mosaic.height and x + w <= mosaic.width
        # no other level within `gap` positions (a grown box meets only zeros)
        grown = owner[max(0, y - gap):y + h + gap, max(0, x - gap):x + w + gap]
        assert (grown == -1).all()
        owner[y:y + h, x:x + w] = level
    assert torch.equal(mosaic.owner, owner)
    runs = mosaic.runs.tolist()
    assert runs[0][0] == 0 and sum(count for _, count, _ in runs) == owner.numel()
    flat = owner.flatten().tolist()
    for first, count, level in runs:
        assert flat[first:first + count] == [level] * count


def test_the_pyramid_fills_the_column_beside_p3():
    """P3 20x24 on the left; P4 beside it, P5 below P4, P6 and P7 stacked right of P5."""
    mosaic = plan_mosaic(SIZES, 2)
    assert (mosaic.height, mosaic.width) == (20, 38)
    assert mosaic.boxes == ((0, 0, 20, 24), (0, 26, 10, 12), (12, 26, 5, 6), (12, 34, 3, 3),
                            (17, 34, 2, 2))


def test_pack_and_unpack_are_inverse():
    features = [torch.randn(2, 3, h, w) for h, w in SIZES]
    mosaic = plan_mosaic(SIZES, 2)
    packed = pack(features, mosaic)
    assert packed.shape == (2, 3, 20, 38) and packed.is_contiguous(
        memory_format=torch.channels_last)
    outside = mosaic.mask(packed) == 0
    assert outside.sum() == 20 * 38 - sum(h * w for h, w in SIZES)
    assert (packed * outside == 0).all()  # zeros between the levels
    for a, b in zip(unpack(packed, mosaic), features):
        assert torch.equal(a, b)


def _searched_head():
    cfg = get_cfg_defaults()
    cfg.merge_from_list(["MODEL.FPN.OUT_CHANNELS", 32, "MODEL.FAD.TOWER_CHANNELS", 32,
                         "MODEL.FAD.EDGE_CHANNELS", 16])
    return build_fad_head(cfg, 5, BOX, CLS)


def _plain_head():
    return FCOSHead(32, 5, num_convs=2)


@pytest.mark.parametrize("make_head,gap", [(_searched_head, 3), (_plain_head, 1)],
                         ids=["searched", "plain"])
def test_packed_levels_give_the_loops_outputs_and_gradients(make_head, gap):
    torch.manual_seed(0)
    head = make_head().double().train()
    with torch.no_grad():  # GroupNorm affines and biases away from their init
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    cfg = get_cfg_defaults()
    prepare_layers(cfg, head)  # NHWC, GroupNorm + ReLU fused, as DetectorStep makes them
    features = [torch.randn(2, 32, h, w, dtype=torch.float64).to(
        memory_format=torch.channels_last) for h, w in SIZES]
    with torch.no_grad():
        probe = head(features)
    weights = {k: torch.randn_like(v) for k, v in probe.items()}
    out_a, feat_a, par_a = head_grads(head, features, weights)
    model = torch.nn.Module()
    model.head = head
    assert enable_mosaic_levels(model) == gap == head.mosaic_gap
    out_b, feat_b, par_b = head_grads(head, features, weights)
    for k in out_a:
        torch.testing.assert_close(out_b[k], out_a[k], rtol=1e-11, atol=1e-11)
    for a, b in zip(feat_a, feat_b):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-11)
    for name in par_a:
        torch.testing.assert_close(par_b[name], par_a[name], rtol=1e-10, atol=1e-11, msg=name)


def test_flop_counting_sees_the_levels_not_the_mosaic():
    model = torch.nn.Module()
    model.head = _searched_head()
    prepare_layers(get_cfg_defaults(), model)
    enable_mosaic_levels(model)
    features = [torch.randn(1, 32, h, w).to(memory_format=torch.channels_last)
                for h, w in SIZES]
    assert mosaic_applies(features)
    with FlopCounterMode(display=False) as counter:
        assert not mosaic_applies(features)
        model.head(features)
    model.head.mosaic_gap = 0
    with FlopCounterMode(display=False) as plain:
        model.head(features)
    assert counter.get_total_flops() == plain.get_total_flops()


def test_heads_it_cannot_run_are_refused(synthetic_root, tmp_path):
    with pytest.raises(ConfigError, match="needs an FCOS detector"):
        enable_mosaic_levels(torch.nn.Linear(2, 2))
    model = torch.nn.Module()
    model.head = _plain_head()  # GroupNorm and ReLU not fused
    with pytest.raises(ConfigError, match="GroupNorm"):
        enable_mosaic_levels(model)
    strided = torch.nn.Module()
    strided.head = _plain_head()
    prepare_layers(get_cfg_defaults(), strided.head)
    strided.head.cls_logits.stride = (2, 2)
    with pytest.raises(ConfigError, match="stride-1 'same'"):
        enable_mosaic_levels(strided)
    cfg = tiny_fcos_cfg(synthetic_root, str(tmp_path))
    cfg.merge_from_list(["SOLVER.MOSAIC_HEAD_LEVELS", True, "SOLVER.CHANNELS_LAST", False])
    with pytest.raises(ConfigError, match="needs SOLVER.CHANNELS_LAST"):
        DetectorStep(cfg, build_detector(cfg, 2), torch.device("cpu"))


@pytest.mark.parametrize("head,scope", [("plain", "off"), ("searched", "off"),
                                        ("searched", "towers")])
def test_a_detector_step_with_packed_levels_equals_one_without(synthetic_root, tmp_path, head,
                                                                scope, monkeypatch):
    """Plain and searched heads; with the towers' convolutions in bf16 (SOLVER.AMP_CPU_SCOPE
    towers, as the demo on a CPU with AMX) within bf16's tolerance."""
    images, targets = two_image_batch()
    results = []
    for mosaic in (False, True):
        cfg = tiny_fcos_cfg(synthetic_root, str(tmp_path))
        cfg.merge_from_list(["SOLVER.MOSAIC_HEAD_LEVELS", mosaic, "MODEL.FCOS.NUM_CONVS", 2])
        if head == "searched":
            cfg.merge_from_list(["MODEL.FAD.GENOTYPE", PAPER, "MODEL.FAD.TOWER_CHANNELS", 32,
                                 "MODEL.FAD.EDGE_CHANNELS", 16])
        if scope == "towers":  # bf16 on the towers' convs of >= 8 positions
            cfg.merge_from_list(["SOLVER.AMP_CPU", True, "SOLVER.AMP_CPU_SCOPE", "towers"])
            monkeypatch.setattr(amp_module, "TOWER_MIN_POSITIONS", 8)
        torch.manual_seed(0)
        model = build_detector(cfg, 2).train()
        step = DetectorStep(cfg, model, torch.device("cpu"))
        assert bool(model.head.mosaic_gap) == mosaic
        losses = step.run((images, targets)).losses
        results.append((losses, {k: v.clone() for k, v in model.state_dict().items()}))
    (loss_a, state_a), (loss_b, state_b) = results
    tol = {"rtol": 1e-4, "atol": 1e-6} if scope == "off" else {"rtol": 2e-2, "atol": 1e-4}
    for k in loss_a:
        torch.testing.assert_close(loss_b[k], loss_a[k], **tol)
    for k in state_a:
        torch.testing.assert_close(state_b[k], state_a[k], **tol, msg=k)
