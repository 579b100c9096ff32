"""Deformable / Sparse DETR init as the reference code: xavier on the transformer's matrices
(the scoring network's included), default biases of enc_output / pos_trans / the scoring
network, and prediction heads that start as copies of one class head and one box head."""
import math

import pytest
import torch
from torch import nn

from fad.modeling.detr.heads import DetrHeads
from fad.modeling.detr.transformer import DeformableTransformer

D = 64


def _xavier_bound(linear: nn.Linear) -> float:
    fan_out, fan_in = linear.weight.shape
    return math.sqrt(6.0 / (fan_in + fan_out))


def _is_default_bias(linear: nn.Linear) -> bool:
    """nn.Linear's default bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), not all zero."""
    bound = 1 / math.sqrt(linear.weight.shape[1])
    return 0 < linear.bias.abs().max().item() <= bound


def test_sparse_detr_transformer_init():
    torch.manual_seed(0)
    t = DeformableTransformer(D, 8, 2, 2, 128, num_feature_levels=2, num_queries=10,
                              two_stage=True, rho=0.3)
    scoring = [m for m in t.scoring.modules() if isinstance(m, nn.Linear)]
    assert len(scoring) == 4
    for linear in scoring + [t.enc_output, t.pos_trans]:
        # xavier U(-b, b), b = sqrt(6 / (fan_in + fan_out)), is wider than the default's
        # U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for every one of these shapes
        widest = linear.weight.abs().max().item()
        assert 1 / math.sqrt(linear.weight.shape[1]) < widest <= _xavier_bound(linear)
        assert _is_default_bias(linear)


def test_single_stage_transformer_keeps_query_embed_and_zeroes_reference_bias():
    torch.manual_seed(0)
    t = DeformableTransformer(D, 8, 1, 1, 128, num_feature_levels=2, num_queries=300)
    assert t.query_embed.weight.std().item() == pytest.approx(1.0, rel=0.1)  # nn.Embedding N(0, 1)
    assert t.reference_points.bias.abs().max().item() == 0.0
    assert t.reference_points.weight.abs().max().item() <= _xavier_bound(t.reference_points)


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                 b.state_dict().values()))


def _wh_bias(box_head: nn.Module) -> list[float]:
    return box_head.layers[-1].bias[2:].tolist()


def test_two_stage_and_encoder_aux_heads_start_as_copies_of_the_decoder_heads():
    torch.manual_seed(0)
    h = DetrHeads(D, 5, 3, with_box_refine=True, two_stage=True, num_enc_aux=2)
    boxes = [*h.bbox_embed, h.enc_bbox, *h.enc_aux_bbox]
    classes = [*h.class_embed, h.enc_class, *h.enc_aux_class]
    assert all(_same(b, boxes[0]) for b in boxes) and all(_same(c, classes[0]) for c in classes)
    assert all(_wh_bias(b) == [0.0, 0.0] for b in boxes)
    assert boxes[0].layers[0].weight.std() > 0  # hidden layers random, shared by the copies
    assert len({id(p) for b in boxes for p in b.parameters()}) == 3 * 2 * len(boxes)


@pytest.mark.parametrize("refine", [False, True])
def test_single_stage_wh_bias_only_where_the_reference_is_a_point(refine):
    torch.manual_seed(0)
    h = DetrHeads(D, 5, 3, with_box_refine=refine, two_stage=False)
    assert _wh_bias(h.box(0)) == [-2.0, -2.0]
    if refine:  # later layers refine boxes: no extra shrink
        assert all(_wh_bias(h.box(i)) == [0.0, 0.0] for i in (1, 2))
        torch.testing.assert_close(h.box(1).layers[0].weight, h.box(0).layers[0].weight)
