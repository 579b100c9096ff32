"""ASAG RelationBlock and its pieces: xyzr boxes, IoF, sine encoding, multi-scale RoIAlign,
IoF-biased self-attention by hand, and the valid-query mask."""
import math

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign

from fad.modeling.asag.blocks import IoFSelfAttention, padding_attention_mask, sine_xyzr_encoding
from fad.modeling.asag.boxes import box_iof, refine_xyzr, xyxy_to_xyzr, xyzr_to_xyxy
from fad.modeling.asag.pooling import multiscale_roi_align
from fad.modeling.asag.relation import RelationBlock

STRIDES = (4, 8, 16, 32)


def _features(batch=2, channels=8, height=64, width=96, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, channels, height // s, width // s, generator=gen)
            for s in STRIDES]


def _boxes(batch, num, seed=0, max_xy=60.0):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(batch, num, 2, generator=gen) * max_xy
    wh = torch.rand(batch, num, 2, generator=gen) * 30 + 2
    return torch.cat([xy, xy + wh], -1)


def test_xyzr_by_hand_and_round_trip():
    box = torch.tensor([[0.0, 0.0, 8.0, 16.0]])  # 2 x 4 cells at stride 4
    xyzr = xyxy_to_xyzr(box, 4.0)
    assert torch.allclose(xyzr, torch.tensor([[1.0, 2.0, 1.5, 0.5]]), atol=1e-6)
    boxes = _boxes(3, 10).reshape(-1, 4)
    assert torch.allclose(xyzr_to_xyxy(xyxy_to_xyzr(boxes)), boxes, atol=1e-4)
    # refinement moves the centre by delta * 2^z and adds dz, dr
    moved = refine_xyzr(xyzr, torch.tensor([[0.5, -1.0, 0.25, 0.0]]))
    assert torch.allclose(moved, torch.tensor([[1 + 0.5 * 2 ** 1.5, 2 - 2 ** 1.5, 1.75, 0.5]]))


def test_iof_by_hand():
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 4.0, 1.0]])
    expected = torch.tensor([[1.0, 0.25, 0.5], [0.25, 1.0, 0.0], [0.5, 0.0, 1.0]])
    assert torch.allclose(box_iof(boxes, boxes), expected)
    small = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    assert box_iof(small, boxes[:1]).item() == 1.0  # over the first box's own area
    assert box_iof(boxes[:1], small).item() == 0.25


def test_sine_encoding_layout():
    xyzr = torch.tensor([[[500.0, 1000.0, 2.0, -0.5]]])
    enc = sine_xyzr_encoding(xyzr, 64)
    assert enc.shape == (1, 1, 256)
    x, r = enc[0, 0, :64], enc[0, 0, 192:]
    assert math.isclose(x[0].item(), math.sin(0.5), abs_tol=1e-6)
    assert math.isclose(x[1].item(), math.cos(0.5), abs_tol=1e-6)
    assert math.isclose(x[2].item(), math.sin(0.5 / 10000 ** (2 / 64)), abs_tol=1e-6)
    assert math.isclose(x[3].item(), math.cos(0.5 / 10000 ** (2 / 64)), abs_tol=1e-6)
    assert math.isclose(enc[0, 0, 64].item(), math.sin(1.0), abs_tol=1e-6)
    assert math.isclose(r[0].item(), math.sin(-0.5), abs_tol=1e-6)  # z, r are not divided


def test_multiscale_roi_align_matches_torchvision():
    feats = _features()
    boxes = torch.cat([_boxes(2, 20, seed=1), _boxes(2, 5, seed=2) * 3], 1)  # all levels
    ours = multiscale_roi_align(feats, boxes, list(STRIDES), 7, 2)
    pooler = MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], 7, 2)
    ref = pooler(dict(zip(["p2", "p3", "p4", "p5"], feats)), list(boxes.unbind(0)),
                 [(64, 96), (60, 90)])
    assert torch.allclose(ours, ref, atol=1e-6)


def _manual_attention(module, content, xyzr, mask):
    """The IoF-biased attention written out head by head."""
    attn = module.attn
    dim, heads = content.shape[-1], module.num_heads
    x = content + sine_xyzr_encoding(xyzr, dim // 4)
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attn.in_proj_bias.chunk(3)
    boxes = xyzr_to_xyxy(xyzr, 1.0)
    out = []
    for b in range(content.shape[0]):
        q, k, v = x[b] @ w_q.T + b_q, x[b] @ w_k.T + b_k, x[b] @ w_v.T + b_v
        iof = box_iof(boxes[b], boxes[b])
        per_head = []
        for h in range(heads):
            sl = slice(h * dim // heads, (h + 1) * dim // heads)
            logits = q[:, sl] @ k[:, sl].T / math.sqrt(dim // heads)
            logits = logits + torch.log(iof + 1e-7) * module.iof_tau[h]
            logits = logits.masked_fill(mask[b], float("-inf"))
            per_head.append(torch.softmax(logits, -1) @ v[:, sl])
        out.append(attn.out_proj(torch.cat(per_head, -1)) + x[b])
    return module.norm(torch.stack(out))


def test_iof_attention_by_hand():
    torch.manual_seed(0)
    module = IoFSelfAttention(16, 2)
    assert ((module.iof_tau >= 0) & (module.iof_tau <= 4)).all()
    boxes = torch.tensor([[[0.0, 0.0, 8.0, 8.0], [4.0, 4.0, 12.0, 12.0], [0.0, 0.0, 16.0, 4.0]]])
    xyzr = xyxy_to_xyzr(boxes)
    content = torch.randn(1, 3, 16)
    mask = padding_attention_mask(torch.tensor([[True, True, False]]))
    with torch.no_grad():
        assert torch.allclose(module(content, xyzr, mask),
                              _manual_attention(module, content, xyzr, mask), atol=1e-5)


def test_padding_mask_rows():
    mask = padding_attention_mask(torch.tensor([[True, False, True]]))
    expected = torch.tensor([[[False, True, False], [False, False, False],
                              [False, True, False]]])
    assert torch.equal(mask, expected)


def _relation(num_classes=5, dim=32, channels=8):
    torch.manual_seed(0)
    return RelationBlock(num_classes, dim=dim, num_heads=4, ffn_dim=64, in_channels=channels)


def test_relation_block_shapes_and_init():
    block = _relation()
    feats, boxes = _features(), _boxes(2, 6)
    sizes = torch.tensor([[64, 96], [60, 90]])
    out = block(feats, boxes, sizes, padding_attention_mask(torch.ones(2, 6, dtype=torch.bool)))
    assert out["logits"].shape == (2, 6, 5) and out["content"].shape == (2, 6, 32)
    assert out["boxes"].shape == (2, 6, 4) and out["xyzr"].shape == (2, 6, 4)
    assert not out["xyzr"].requires_grad and out["boxes"].requires_grad
    assert block.roi_proj.in_features == 8 * 49
    # zero-initialised deltas: proposals are the anchors, as cxcywh fractions of the image
    whwh = torch.tensor([[96.0, 64, 96, 64], [90, 60, 90, 60]])[:, None]
    cxcywh = torch.cat([(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]],
                       -1)
    assert torch.allclose(out["boxes"], cxcywh / whwh, atol=1e-4)
    assert torch.allclose(block.cls_logits.bias, torch.full((5,), -math.log(99)))
    assert len(block.reg_branch) == 9 and len(block.cls_branch) == 3


def test_valid_queries_never_see_padded_ones():
    block = _relation().eval()
    feats, boxes = _features(), _boxes(2, 6)
    sizes = torch.tensor([[64, 96], [60, 90]])
    valid = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    mask = padding_attention_mask(valid)
    with torch.no_grad():
        out = block(feats, boxes, sizes, mask)
        changed = boxes.clone()
        changed[1, 4] = torch.tensor([1.0, 2.0, 50.0, 40.0])
        changed[1, 5] = torch.tensor([10.0, 10.0, 12.0, 30.0])
        out2 = block(feats, changed, sizes, mask)
    for key in ("logits", "boxes", "content"):
        assert torch.allclose(out[key][valid], out2[key][valid], atol=1e-5), key
        assert not torch.allclose(out[key][~valid], out2[key][~valid])


@pytest.mark.parametrize("valid_row", [[False] * 3, [True, False, False]])
def test_padded_rows_are_finite(valid_row):
    block = _relation().eval()
    feats, boxes = _features(batch=1), _boxes(1, 3)
    valid = torch.tensor([valid_row])
    with torch.no_grad():
        out = block(feats, boxes, torch.tensor([[64, 96]]), padding_attention_mask(valid))
    assert all(torch.isfinite(v).all() for v in out.values())
