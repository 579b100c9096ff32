"""DETR building blocks against hand-computed values: encodings, backbone levels, reference
points, two-stage proposals and their masking, postprocess decoding, box helpers, box
refinement and the head init."""
import math

import pytest
import torch
from torch import nn

from fad.config import get_cfg_defaults
from fad.modeling.detr.backbone import MultiLevelBackbone, build_body
from fad.modeling.detr.box_ops import inverse_sigmoid, refine_boxes
from fad.modeling.detr.decoder import DecoderLayer, DeformableDecoder
from fad.modeling.detr.encoder import encoder_reference_points, valid_ratios
from fad.modeling.detr.heads import DetrHeads
from fad.modeling.detr.outputs import TransformerOutputs
from fad.modeling.detr.position_encoding import PositionEmbeddingSine, box_sine_embedding
from fad.modeling.detr.postprocess import postprocess
from fad.modeling.detr.proposals import encoder_proposals
from fad.modeling.detr.transformer import DeformableTransformer


def _sine(value: float, k: int, feats: int, temperature: float = 10000.0) -> float:
    freq = temperature ** (2 * (k // 2) / feats)
    return math.sin(value / freq) if k % 2 == 0 else math.cos(value / freq)


def test_position_encoding_matches_the_formula_inside_the_valid_region():
    mask = torch.zeros(1, 3, 5, dtype=torch.bool)
    mask[:, 2, :] = True  # last row padded
    mask[:, :, 3:] = True  # last two columns padded
    feats = 6
    pos = PositionEmbeddingSine(num_pos_feats=feats)(mask)
    assert pos.shape == (1, 2 * feats, 3, 5)
    valid_h, valid_w = 2, 3
    for i in range(valid_h):
        for j in range(valid_w):
            y = (i + 1 - 0.5) / valid_h * 2 * math.pi
            x = (j + 1 - 0.5) / valid_w * 2 * math.pi
            want = ([_sine(y, k, feats) for k in range(feats)]
                    + [_sine(x, k, feats) for k in range(feats)])
            assert torch.allclose(pos[0, :, i, j], torch.tensor(want), atol=1e-5), (i, j)


def test_box_sine_embedding_of_centre_boxes():
    emb = box_sine_embedding(torch.zeros(2, 3, 4), num_pos_feats=8)
    assert emb.shape == (2, 3, 32)
    want = torch.tensor([_sine(math.pi, k, 8) for k in range(8)] * 4)
    assert torch.allclose(emb[1, 2], want, atol=1e-6)


def test_multilevel_backbone_levels_and_masks():
    cfg = get_cfg_defaults()
    cfg.merge_from_list(["MODEL.BACKBONE.DEPTH", 18, "MODEL.BACKBONE.NORM", "BN"])
    body, channels = build_body(cfg)
    assert channels == [128, 256, 512]
    net = MultiLevelBackbone(body, channels, d_model=32, num_levels=4, gn_groups=8)
    images = torch.randn(2, 3, 64, 96)
    mask = torch.zeros(2, 64, 96, dtype=torch.bool)
    mask[1, :, 48:] = True
    out = net(images, mask)
    assert [tuple(f.shape) for f, _ in out] == [(2, 32, 8, 12), (2, 32, 4, 6), (2, 32, 2, 3),
                                                (2, 32, 1, 2)]
    for f, m in out:
        assert m.shape == (2,) + f.shape[-2:]
        assert not m[0].any()
        w = f.shape[-1]
        assert m[1, :, : w // 2].logical_not().all() and m[1, :, (w + 1) // 2:].all()
    two = MultiLevelBackbone(body, channels, d_model=32, num_levels=2, gn_groups=8)
    assert two.body_keys == ["c4", "c5"]
    with pytest.raises(ValueError, match="d_model 30 is not divisible by gn_groups 8"):
        MultiLevelBackbone(body, channels, d_model=30, num_levels=2, gn_groups=8)


def test_encoder_reference_points_by_hand():
    mask0 = torch.zeros(1, 2, 4, dtype=torch.bool)
    mask0[:, :, 2:] = True  # valid width 2 of 4
    mask1 = torch.zeros(1, 1, 2, dtype=torch.bool)
    mask1[:, :, 1:] = True  # valid width 1 of 2
    ratios = torch.stack([valid_ratios(mask0), valid_ratios(mask1)], 1)  # [1, 2, 2]
    assert torch.allclose(ratios, torch.tensor([[[0.5, 1.0], [0.5, 1.0]]]))
    ref = encoder_reference_points([(2, 4), (1, 2)], ratios)
    assert ref.shape == (1, 10, 2, 2)
    # level-0 token (row 1, col 0): centre (0.5 / 2, 1.5 / 2) of the valid region, then times the
    # valid ratio (0.5, 1) of each level
    assert torch.allclose(ref[0, 4, 0], torch.tensor([0.25 * 0.5, 0.75]))
    assert torch.allclose(ref[0, 4, 1], torch.tensor([0.25 * 0.5, 0.75]))
    # level-1 token 0: centre (0.5 / 1, 0.5 / 1)
    assert torch.allclose(ref[0, 8, 0], torch.tensor([0.5 * 0.5, 0.5]))


def test_two_stage_proposals_mask_padding_and_borders():
    shapes = [(4, 4), (2, 2)]
    mask = torch.zeros(1, 20, dtype=torch.bool)
    mask[0, :16].view(4, 4)[:, 3] = True  # level 0: last column padded
    memory = torch.ones(1, 20, 3)
    mem, props, valid = encoder_proposals(memory, mask, shapes, margin=0.01)
    level0_valid = valid[0, :16].view(4, 4)
    assert not level0_valid[:, 3].any() and level0_valid[:, :3].all()
    assert valid[0, 16:].all()
    assert torch.isinf(props[0, :16].view(4, 4, 4)[:, 3]).all()
    assert (mem[0, :16].view(4, 4, 3)[:, 3] == 0).all() and (mem[~mask] != 0).all()
    # token (row 1, col 2) of level 0: centre (2.5 / 3, 1.5 / 4), size 0.05; level 1: size 0.1
    box = torch.sigmoid(props[0, 4 + 2])
    assert torch.allclose(box, torch.tensor([2.5 / 3, 1.5 / 4, 0.05, 0.05]), atol=1e-6)
    want = torch.tensor([0.25, 0.25, 0.1, 0.1])
    assert torch.allclose(torch.sigmoid(props[0, 16]), want, atol=1e-6)
    # a wider margin invalidates the border tokens too: centres 1/6 and 1/8 < 0.2
    _, props, valid = encoder_proposals(memory, mask, shapes, margin=0.2)
    assert not valid[0, :16].view(4, 4)[0].any() and not valid[0, 16:].any()
    assert torch.isinf(props[0, 16:]).all()


class _NegNorm(nn.Module):
    """Objectness -|x|: highest for the zeroed (invalid) tokens."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x):
        return -x.norm(dim=-1, keepdim=True).expand(*x.shape[:-1], self.num_classes)


def test_two_stage_queries_never_come_from_invalid_tokens():
    torch.manual_seed(0)
    tr = DeformableTransformer(d_model=16, n_heads=2, num_encoder_layers=1, num_decoder_layers=1,
                               dim_feedforward=32, dropout=0.0, num_feature_levels=2,
                               num_queries=12, two_stage=True)
    heads = DetrHeads(16, 3, 1, with_box_refine=True, two_stage=True)
    heads.enc_class = _NegNorm(3)  # invalid tokens (memory zeroed) would win without masking
    masks = [torch.zeros(2, 6, 6, dtype=torch.bool), torch.zeros(2, 3, 3, dtype=torch.bool)]
    masks[0][1, :, 3:] = True
    masks[1][1, :, 2:] = True
    feats = [(torch.randn(2, 16, 6, 6), masks[0]), (torch.randn(2, 16, 3, 3), masks[1])]
    pos = [torch.randn(2, 16, 6, 6), torch.randn(2, 16, 3, 3)]
    with torch.no_grad():
        out = tr(feats, pos, heads)
    assert out.proposals.valid[1].sum() >= 12 and not out.proposals.valid.all()
    ref = out.init_reference
    assert ref.shape == (2, 12, 4)
    assert (ref < 0.99).all() and (ref > 0.01).all()
    assert out.hs.shape == (1, 2, 12, 16)


def test_postprocess_decodes_query_and_label_from_the_flat_index():
    logits = torch.full((1, 3, 4), -10.0)
    logits[0, 2, 1] = 5.0  # query 2, class 1: best
    logits[0, 0, 3] = 3.0  # query 0, class 3: second
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.1, 0.1, 0.1, 0.1], [0.25, 0.75, 0.5, 0.5]]])
    out = postprocess(logits, boxes, [(100, 200)], num_detections=2)[0]
    assert out["labels"].tolist() == [1, 3]
    assert torch.allclose(out["scores"], torch.sigmoid(torch.tensor([5.0, 3.0])))
    assert torch.allclose(out["boxes"][0], torch.tensor([0.0, 50.0, 100.0, 100.0]))
    assert torch.allclose(out["boxes"][1], torch.tensor([80.0, 30.0, 120.0, 70.0]))
    assert postprocess(logits, boxes, [(10, 10)], num_detections=100)[0]["scores"].shape == (12,)


def test_box_helpers():
    x = torch.tensor([-3.0, 0.0, 2.5])
    assert torch.allclose(inverse_sigmoid(torch.sigmoid(x)), x, atol=1e-4)
    assert torch.isfinite(inverse_sigmoid(torch.tensor([0.0, 1.0]))).all()


def test_refine_boxes_by_hand():
    logit = math.log(0.25 / 0.75)  # inverse_sigmoid(0.25)
    delta = torch.tensor([[-logit, 0.0, math.log(3.0), 0.0]])
    boxes = refine_boxes(delta, torch.tensor([[0.25, 0.5, 0.25, 0.25]]))
    torch.testing.assert_close(boxes, torch.tensor([[0.5, 0.5, 0.5, 0.25]]))
    points = refine_boxes(delta, torch.tensor([[0.25, 0.5]]))  # (w, h) = sigmoid(delta)
    torch.testing.assert_close(points, torch.tensor([[0.5, 0.5, 0.75, 0.5]]))


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_decoder_refines_references_with_refine_boxes(ref_dim):
    torch.manual_seed(0)
    layer = DecoderLayer(16, 32, 0.0, n_levels=1, n_heads=2, n_points=2)
    decoder = DeformableDecoder(layer, 2).eval()
    heads = DetrHeads(16, 3, 2, with_box_refine=True, two_stage=ref_dim == 4)
    for box in heads.bbox_embed:
        nn.init.normal_(box.layers[-1].weight, std=0.1)
    memory, tgt, pos = torch.randn(1, 12, 16), torch.randn(1, 5, 16), torch.randn(1, 5, 16)
    ref = torch.rand(1, 5, ref_dim) * 0.8 + 0.1
    shapes, start = torch.tensor([[3, 4]]), torch.tensor([0])
    ratios, mask = torch.ones(1, 1, 2), torch.zeros(1, 12, dtype=torch.bool)
    hs, refs, _ = decoder(tgt, ref, memory, shapes, start, ratios, pos, mask, heads.box,
                          level_shapes=[(3, 4)])
    torch.testing.assert_close(refs[0], refine_boxes(heads.box(0)(hs[0]), ref))
    torch.testing.assert_close(refs[1], refine_boxes(heads.box(1)(hs[1]), refs[0]))
    assert not refs.requires_grad


def test_layer_reference_is_the_one_the_previous_layer_passed_on():
    """Layer i's box deltas refine the initial reference (i = 0) or references[i - 1]."""
    init, refs = torch.rand(1, 5, 4), torch.rand(3, 1, 5, 4)
    out = TransformerOutputs(torch.zeros(3, 1, 5, 8), init, refs, torch.zeros(1, 6).bool(),
                             torch.tensor([[2, 3]]), torch.tensor([0]), [(2, 3)])
    assert out.layer_reference(0) is init
    assert torch.equal(out.layer_reference(1), refs[0])
    assert torch.equal(out.layer_reference(2), refs[1])


def test_class_heads_start_at_the_focal_prior():
    heads = DetrHeads(16, 3, 2, with_box_refine=True, two_stage=True, num_enc_aux=1)
    expected = -math.log(99.0)  # sigmoid(b) = 0.01
    for head in [*heads.class_embed, heads.enc_class, *heads.enc_aux_class]:
        torch.testing.assert_close(head.bias, torch.full((3,), expected))
