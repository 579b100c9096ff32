"""ASAG one-layer decoder heads: AdaMixer (3D sampling, mixing, init), SparseRCNN (DynamicConv,
weighted deltas), the four parallel heads and `used_head`."""
import math

import pytest
import torch

from fad.modeling.asag.adamixer import (
    AdaMixerHead,
    AdaptiveMixing,
    level_weights,
    make_sample_points,
    sample_3d,
)
from fad.modeling.asag.blocks import padding_attention_mask
from fad.modeling.asag.boxes import xyxy_to_xyzr
from fad.modeling.asag.dynamic_conv import DynamicConv, SparseRcnnHead, apply_box_deltas
from fad.modeling.asag.heads import DecoderHeads, used_head_index
from fad.modeling.set_prediction import normalize_xyxy

STRIDES = (4, 8, 16, 32)
SIZES = torch.tensor([[64, 96], [60, 90]])
TINY_ADAMIXER = {"num_heads": 4, "ffn_dim": 64, "in_channels": 32, "groups": 4,
                 "in_points": 8, "out_points": 16}
TINY_SPARSE = {"num_heads": 4, "ffn_dim": 64, "dynamic_dim": 8}


def _features(batch=2, channels=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, channels, 64 // s, 96 // s, generator=gen) for s in STRIDES]


def _boxes(batch=2, num=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(batch, num, 2, generator=gen) * 50
    return torch.cat([xy, xy + torch.rand(batch, num, 2, generator=gen) * 30 + 2], -1)


def test_adamixer_default_sizes_and_init():
    torch.manual_seed(0)
    head = AdaMixerHead(80)
    assert head.offset_generator.weight.shape == (384, 256)
    assert (head.offset_generator.weight == 0).all()
    bias = head.offset_generator.bias.view(4, 32, 3)
    assert (bias[..., 2] == -1).all()
    assert (bias[..., :2].abs() <= 0.5).all() and bias[..., :2].std() > 0.1
    gen = head.mixing.param_generator
    assert gen.weight.shape == (4 * (64 * 64 + 32 * 128), 256) and (gen.weight == 0).all()
    assert gen.bias.abs().max() <= 1 / 16 and gen.bias.std() > 0  # default Linear bias
    assert head.mixing.out_proj.weight.shape == (256, 4 * 128 * 64)
    assert (head.box_delta.weight == 0).all() and (head.box_delta.bias == 0).all()
    assert torch.allclose(head.cls_logits.bias, torch.full((80,), -math.log(99)))


def test_adamixer_forward_shapes_and_zero_deltas():
    torch.manual_seed(0)
    head = AdaMixerHead(5, dim=32, **TINY_ADAMIXER)
    boxes = _boxes()
    xyzr = xyxy_to_xyzr(boxes)
    out = head(_features(), xyzr, torch.randn(2, 6, 32), SIZES,
               padding_attention_mask(torch.ones(2, 6, dtype=torch.bool)))
    assert out["logits"].shape == (2, 6, 5) and out["content"].shape == (2, 6, 32)
    assert out["xyzr"].shape == (2, 6, 4)
    assert torch.allclose(out["boxes"], normalize_xyxy(boxes, SIZES[:, None]), atol=1e-4)


def test_sample_points_follow_the_box():
    xyzr = xyxy_to_xyzr(torch.tensor([[[0.0, 0.0, 16.0, 32.0]]]))  # w 4, h 8 cells
    offsets = torch.tensor([0.5, -0.25, 1.0]).repeat(2)[None, None]  # 1 group, 2 points
    points = make_sample_points(offsets, xyzr, 1, 2)
    assert points.shape == (1, 1, 1, 2, 3)
    expected = torch.tensor([2 + 0.5 * 4, 4 - 0.25 * 8, xyzr[0, 0, 2].item() + 1.0])
    assert torch.allclose(points[0, 0, 0, 0], expected)


def test_sample_3d_blends_levels():
    weights = level_weights(torch.tensor([0.0, 1.5]), 4)
    expected = torch.softmax(-torch.tensor([0.0, 1, 4, 9]) / 2, 0)
    assert torch.allclose(weights[0], expected) and torch.allclose(weights.sum(-1), torch.ones(2))
    # level l is the constant l + 1; points whose bilinear neighbours lie inside every level
    # sample sum_l w_l (l + 1)
    feats = [torch.full((1, 8, 64 // s, 96 // s), float(i + 1)) for i, s in enumerate(STRIDES)]
    points = torch.tensor([[[[[10.0, 10.0, 0.7], [12.0, 12.0, 2.2]]]]])  # [1, 1, 1, 2, 3]
    points = points.expand(1, 1, 2, 2, 3)  # two groups
    out = sample_3d(points, feats, list(STRIDES))
    assert out.shape == (1, 1, 2, 2, 4)
    levels = torch.arange(1.0, 5.0)
    for p, z in enumerate((0.7, 2.2)):
        want = (level_weights(torch.tensor(z), 4) * levels).sum()
        assert torch.allclose(out[0, 0, :, p], want.expand(2, 4), atol=1e-5)
    # outside the padded map: zero padding
    far = torch.tensor([[[[[1000.0, 1000.0, 1.0]]]]])
    assert (sample_3d(far, feats, list(STRIDES)) == 0).all()


def test_adaptive_mixing_shapes():
    torch.manual_seed(0)
    mixing = AdaptiveMixing(16, 16, 2, 4, 6)
    mixing.reset_parameters()
    assert mixing(torch.randn(1, 3, 2, 4, 8), torch.randn(1, 3, 16)).shape == (1, 3, 16)
    assert mixing.param_generator.weight.shape == (2 * (8 * 8 + 6 * 4), 16)


def test_sparse_rcnn_deltas_and_shapes():
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    moved = apply_box_deltas(torch.tensor([[2.0, -2.0, math.log(2), 0.0]]), boxes)
    assert torch.allclose(moved, torch.tensor([[0.7, 0.1, 0.4, 0.4]]))
    assert torch.isfinite(apply_box_deltas(torch.full((1, 4), 1e4), boxes)).all()  # clamped
    conv = DynamicConv(16, 4, 7)
    assert conv(torch.randn(5, 16), torch.randn(5, 49, 16)).shape == (5, 16)
    torch.manual_seed(0)
    head = SparseRcnnHead(5, dim=32, **TINY_SPARSE)
    norm_boxes = normalize_xyxy(_boxes(), SIZES[:, None])
    out = head(_features(), norm_boxes, torch.randn(2, 6, 32), SIZES,
               padding_attention_mask(torch.ones(2, 6, dtype=torch.bool)))
    assert out["logits"].shape == (2, 6, 5) and out["content"].shape == (2, 6, 32)
    assert torch.allclose(out["boxes"], norm_boxes)  # zero-initialised deltas


def test_used_head_selection():
    assert used_head_index("main", 4) == 3
    assert [used_head_index(f"aux_{k}", 4) for k in range(3)] == [0, 1, 2]
    assert used_head_index("main", 1) == 0
    for bad, num in (("aux_3", 4), ("aux_0", 1), ("head", 4)):
        with pytest.raises(ValueError, match=f"used_head '{bad}' does not fit {num} heads"):
            used_head_index(bad, num)


def _proposals(batch=2, num=6, dim=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    boxes = _boxes(batch, num, seed)
    return {"content": torch.randn(batch, num, dim, generator=gen),
            "xyzr": xyxy_to_xyzr(boxes), "boxes": normalize_xyxy(boxes, SIZES[:, None])}


@pytest.mark.parametrize("decoder", ["adamixer", "sparsercnn"])
def test_parallel_heads(decoder):
    torch.manual_seed(0)
    kwargs = TINY_ADAMIXER if decoder == "adamixer" else TINY_SPARSE
    heads = DecoderHeads(5, decoder, 4, "aux_1", dim=32, **kwargs)
    assert heads.stage_embedding.weight.shape == (4, 32)
    assert 0.5 < heads.stage_embedding.weight.std() < 1.5  # N(0, 1)
    feats, proposals = _features(), _proposals()
    outs = heads(feats, proposals, SIZES)
    assert sorted(outs) == [0, 1, 2, 3]
    assert not torch.allclose(outs[0]["logits"], outs[3]["logits"])
    heads.eval()
    with torch.no_grad():
        evaluated = heads(feats, proposals, SIZES)
        assert list(evaluated) == [1]
        assert torch.allclose(evaluated[1]["logits"], outs[1]["logits"], atol=1e-5)
        # heads are not chained: head 3 ignores head 0's weights
        for p in heads.heads[0].parameters():
            p.add_(1.0)
        heads.used_index = 3
        assert torch.allclose(heads(feats, proposals, SIZES)[3]["logits"], outs[3]["logits"],
                              atol=1e-5)


def test_one_head_model_and_errors():
    heads = DecoderHeads(5, "adamixer", 1, "main", dim=32, **TINY_ADAMIXER).eval()
    assert len(heads.heads) == 1 and heads.used_index == 0
    with torch.no_grad():
        assert list(heads(_features(), _proposals(), SIZES)) == [0]
    with pytest.raises(ValueError, match="unknown decoder 'detr'; choose one of adamixer, "):
        DecoderHeads(5, "detr")
    with pytest.raises(ValueError, match="num_decoder_heads must be >= 1, got 0"):
        DecoderHeads(5, "adamixer", 0)


@pytest.mark.parametrize("decoder", ["adamixer", "sparsercnn"])
def test_heads_respect_the_valid_mask(decoder):
    torch.manual_seed(0)
    kwargs = TINY_ADAMIXER if decoder == "adamixer" else TINY_SPARSE
    heads = DecoderHeads(5, decoder, 1, "main", dim=32, **kwargs).eval()
    valid = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    mask = padding_attention_mask(valid)
    feats, proposals = _features(), _proposals()
    changed = {k: v.clone() for k, v in proposals.items()}
    changed["content"][1, 3:] += 5.0
    changed["xyzr"][1, 4, :2] += 3.0
    changed["boxes"][1, 4, :2] += 0.1
    with torch.no_grad():
        a, b = heads(feats, proposals, SIZES, mask)[0], heads(feats, changed, SIZES, mask)[0]
    for key in ("logits", "boxes", "content"):
        assert torch.allclose(a[key][valid], b[key][valid], atol=1e-5), key
