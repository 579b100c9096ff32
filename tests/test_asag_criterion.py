"""ASAG matching and losses: area-weighted Hungarian costs vs brute force, dual weights and the
dual-weighting focal loss by hand, the criterion's masks and normalisation, denoising queries."""
import itertools
import math

import pytest
import torch
from torchvision.ops import box_convert, generalized_box_iou

from fad.modeling.asag.criterion import AsagCriterion, dual_weights, dw_focal_loss
from fad.modeling.asag.denoising import dn_attention_mask, dn_noise_scale, prepare_denoising
from fad.modeling.asag.matcher import AreaWeightedMatcher


def _sig(x):
    return 1 / (1 + math.exp(-x))


def _bce(logit, target):
    p = _sig(logit)
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def _w_pos(p, iou):
    return _sig(4.5 * (p ** 0.4 * iou ** 0.6 - 1 / 3)) / _sig(3)


def _w_neg(p, iou):
    x = iou ** 0.6
    g = (1 - x * x) / 0.75 if x >= 0.5 else 1.0
    return (_sig(4.5 * (g * p ** 0.4 - 1 / 3)) - _sig(-1.5)) / _sig(3)


@pytest.mark.parametrize("p,iou", [(1.0, 1.0), (0.0, 0.3), (0.5, 0.25), (0.8, 0.7), (0.3, 0.9)])
def test_dual_weights_by_hand(p, iou):
    w_pos, w_neg = dual_weights(torch.tensor([p]), torch.tensor([iou]))
    assert math.isclose(w_pos.item(), _w_pos(p, iou), abs_tol=1e-6)
    assert math.isclose(w_neg.item(), _w_neg(p, iou), abs_tol=1e-6)


def test_dual_weight_ranges():
    p, iou = torch.rand(1000), torch.rand(1000)
    w_pos, w_neg = dual_weights(p, iou)
    assert w_pos.min() >= 0.19 and w_pos.max() <= 1 + 1e-6
    assert w_neg.min() >= -1e-6 and w_neg.max() <= 0.81
    assert math.isclose(dual_weights(torch.ones(1), torch.ones(1))[1].item(), 0, abs_tol=1e-6)


def test_dw_focal_loss_by_hand():
    logits = torch.tensor([[[0.5, -1.0], [2.0, 0.0]]])
    matched = (torch.tensor([0]), torch.tensor([1]), torch.tensor([0]))
    w_pos, w_neg, w_area = torch.tensor([0.6]), torch.tensor([0.2]), torch.tensor([1.5])
    loss = dw_focal_loss(logits, matched, w_pos, w_neg, w_area)
    neg = [[_bce(0.5, 0) * _sig(0.5) ** 2, _bce(-1.0, 0) * _sig(-1.0) ** 2],
           [None, _bce(0.0, 0) * _sig(0.0) ** 2]]
    neg[1][0] = (_bce(2.0, 1) * 0.6 + _bce(2.0, 0) * 0.2) * 1.5
    assert torch.allclose(loss, torch.tensor([neg]), atol=1e-6)


def _focal_cost(logit, label):
    p = torch.sigmoid(logit[label])
    pos = 0.25 * (1 - p) ** 2 * -(p + 1e-8).log()
    neg = 0.75 * p ** 2 * -(1 - p + 1e-8).log()
    return pos - neg


def _brute_force(logits, boxes, labels, tgt_boxes, queries, inverse=False):
    """Minimum total cost over every injective assignment of targets to `queries`."""
    giou = generalized_box_iou(box_convert(boxes, "cxcywh", "xyxy"),
                               box_convert(tgt_boxes, "cxcywh", "xyxy"))
    side = (tgt_boxes[:, 2] * tgt_boxes[:, 3]).sqrt()
    weight = 1 + 3 * side if inverse else 4 - 3 * side

    def cost(q, t):
        c = (2 * _focal_cost(logits[q], labels[t]) + 5 * (boxes[q] - tgt_boxes[t]).abs().sum()
             - 2 * giou[q, t])
        return float(c * weight[t])
    return min(sum(cost(q, t) for t, q in enumerate(perm))
               for perm in itertools.permutations(queries, len(labels))), cost


@pytest.mark.parametrize("inverse", [False, True])
def test_matcher_costs_vs_brute_force(inverse):
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 5, 4, generator=gen)
    boxes = torch.cat([torch.rand(1, 5, 2, generator=gen) * 0.6 + 0.2,
                       torch.rand(1, 5, 2, generator=gen) * 0.3 + 0.05], -1)
    tgt = {"labels": torch.tensor([2, 0, 3]),
           "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.1], [0.6, 0.6, 0.3, 0.3],
                                  [0.5, 0.2, 0.1, 0.2]])}
    valid = torch.tensor([[True, True, False, True, True]])
    matcher = AreaWeightedMatcher(inverse=inverse)
    (rows, cols), = matcher(logits, boxes, [tgt], valid)
    assert 2 not in rows.tolist() and len(rows) == 3
    best, cost = _brute_force(logits[0], boxes[0], tgt["labels"], tgt["boxes"], [0, 1, 3, 4],
                              inverse)
    total = sum(cost(q, t) for q, t in zip(rows.tolist(), cols.tolist()))
    assert math.isclose(total, best, rel_tol=1e-5)
    matrix = matcher.cost_matrix(logits[0], boxes[0], tgt["labels"], tgt["boxes"])
    assert math.isclose(matrix[4, 1].item(), cost(4, 1), rel_tol=1e-5)


def test_matcher_refuses_zero_costs():
    with pytest.raises(ValueError, match="cost_class, cost_bbox and cost_giou are all 0"):
        AreaWeightedMatcher(0, 0, 0)


def _outputs(logits, boxes, valid, heads=1):
    sets = {"logits": logits, "boxes": boxes}
    return {"rpn": sets, "heads": {k: sets for k in range(heads)}, "valid": valid}


def test_criterion_one_pair_by_hand():
    logits = torch.tensor([[[1.0, -2.0], [-3.0, 0.5]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.05, 0.05]]])
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.52, 0.5, 0.2, 0.25]])}]
    valid = torch.tensor([[True, False]])
    crit = AsagCriterion(2, AreaWeightedMatcher())
    losses = crit(_outputs(logits, boxes, valid), targets)
    # only query 0 is valid, so it is matched to the target (class 1)
    iou = (0.18 * 0.2) / (0.2 * 0.2 + 0.2 * 0.25 - 0.18 * 0.2)
    p = _sig(-2.0)
    w_area = 4 - 3 * math.sqrt(0.2 * 0.25)
    w_pos, w_neg = _w_pos(p, iou), _w_neg(p, iou)
    ce = _bce(1.0, 0) * _sig(1.0) ** 2 + (_bce(-2.0, 1) * w_pos + _bce(-2.0, 0) * w_neg) * w_area
    assert math.isclose(losses["loss_ce_rpn"].item(), 2 * ce, rel_tol=1e-5)
    l1 = (0.02 + 0.05) * w_pos * w_area
    assert math.isclose(losses["loss_bbox_rpn"].item(), 5 * l1, rel_tol=1e-5)
    enclose = 0.22 * 0.25
    giou = iou - (enclose - (0.2 * 0.2 + 0.2 * 0.25 - 0.18 * 0.2)) / enclose
    assert math.isclose(losses["loss_giou_rpn"].item(), 2 * (1 - giou) * w_pos * w_area,
                        rel_tol=1e-4)
    assert set(losses) == {f"loss_{k}_{s}" for k in ("ce", "bbox", "giou") for s in ("rpn", "h0")}


def test_criterion_ignores_padded_queries_and_divides_by_gt_count():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 3, generator=gen)
    boxes = torch.cat([torch.rand(2, 6, 2, generator=gen) * 0.5 + 0.25,
                       torch.rand(2, 6, 2, generator=gen) * 0.2 + 0.1], -1)
    valid = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    targets = [{"labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.4, 0.4, 0.2, 0.2],
                                                                      [0.6, 0.5, 0.3, 0.2]])},
               {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.1, 0.3]])}]
    crit = AsagCriterion(3, AreaWeightedMatcher())
    base = crit(_outputs(logits, boxes, valid), targets)
    changed_logits, changed_boxes = logits.clone(), boxes.clone()
    changed_logits[1, 4:] = 10.0
    changed_boxes[1, 4:] = torch.tensor([0.5, 0.5, 0.1, 0.3])  # a perfect but padded query
    again = crit(_outputs(changed_logits, changed_boxes, valid), targets)
    for key in base:
        assert torch.allclose(base[key], again[key]), key
    # the same images twice: sums double, the GT count doubles, the losses stay
    doubled = crit(_outputs(logits.repeat(2, 1, 1), boxes.repeat(2, 1, 1), valid.repeat(2, 1)),
                   targets * 2)
    for key in base:
        assert torch.allclose(base[key], doubled[key], rtol=1e-5), key


def test_dn_query_counts_and_noise():
    targets = [{"labels": torch.tensor([0, 1, 2]),
                "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.4],
                                       [0.7, 0.2, 0.2, 0.1]])},
               {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)},
               {"labels": torch.arange(250) % 3, "boxes": torch.full((250, 4), 0.1)}]
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).expand(3, 4, 4)
    valid = torch.tensor([[True] * 4, [True] * 3 + [False], [True] * 4])
    sizes = torch.tensor([[60, 80], [50, 50], [40, 40]])
    dn = prepare_denoising(targets, anchors, valid, sizes, 200, noise_scale=0.0)
    assert dn.num_dn == 200 and dn.boxes.shape == (3, 204, 4)
    assert [len(t["labels"]) for t in dn.targets] == [198, 0, 0]
    assert torch.equal(dn.targets[0]["labels"][:6], torch.tensor([0, 1, 2, 0, 1, 2]))
    assert torch.equal(dn.boxes[:, 200:], anchors)
    gt_pixels = box_convert(targets[0]["boxes"] * torch.tensor([80, 60, 80, 60]), "cxcywh",
                            "xyxy")
    assert torch.allclose(dn.boxes[0, :198], gt_pixels.repeat(66, 1))
    assert torch.allclose(dn.boxes[0, 198:200], torch.tensor([0.0, 0, 80, 60]).expand(2, 4))
    assert torch.allclose(dn.boxes[1, :200], torch.tensor([0.0, 0, 50, 50]).expand(200, 4))
    noisy = prepare_denoising(targets[:1], anchors[:1], valid[:1], sizes[:1], 200, 0.4,
                              torch.Generator().manual_seed(0))
    moved = box_convert(noisy.boxes[0, :198], "xyxy", "cxcywh") / torch.tensor([80, 60, 80, 60])
    clean = targets[0]["boxes"].repeat(66, 1)
    bound = 0.4 * torch.cat([clean[:, 2:] / 2, clean[:, 2:]], 1) + 1e-5
    assert ((moved - clean).abs() <= bound).all() and not torch.allclose(moved, clean)
    assert torch.equal(noisy.targets[0]["boxes"], clean)  # targets stay clean


def test_dn_attention_mask():
    valid = torch.tensor([[True, True, False]])
    mask = dn_attention_mask(valid, 5, [2])[0]  # groups {0, 1}, {2, 3}, leftover {4}
    allowed = ~mask
    assert allowed[0, :5].tolist() == [True, True, False, False, False]
    assert allowed[3, :5].tolist() == [False, False, True, True, False]
    assert allowed[4, :5].tolist() == [False, False, False, False, True]
    assert not allowed[5:, :5].any()  # anchors never see DN queries
    assert not allowed[:7, 7].any() and allowed[7, 5:].all()  # padded anchor column / row
    assert allowed[:5, 5:7].all()  # DN queries see the valid anchors
    assert allowed.any(-1).all()
    assert (~dn_attention_mask(valid, 4, [0])[0, :4, :4]).all()  # no GT: one group


def test_dn_noise_scale_and_losses():
    assert dn_noise_scale(0) == 0.8 and math.isclose(dn_noise_scale(10), 0.4)
    assert dn_noise_scale(7, 0.4) == 0.4
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])},
               {"labels": torch.tensor([0]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2]])}]
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4 + 3, 2, generator=gen)
    boxes = torch.tensor([0.5, 0.5, 0.2, 0.2]).repeat(2, 7, 1)
    dn_targets = [{"labels": t["labels"].repeat(4), "boxes": t["boxes"].repeat(4, 1)}
                  for t in targets]
    outputs = _outputs(logits, boxes, torch.ones(2, 3, dtype=torch.bool), heads=2)
    outputs.update(num_dn=4, dn_targets=dn_targets)
    losses = AsagCriterion(2, AreaWeightedMatcher())(outputs, targets)
    assert {f"dn_loss_ce_{s}" for s in ("rpn", "h0", "h1")} <= set(losses)
    # DN class loss by hand: every slot is matched to its own copy, normalised by 4 * 2
    ce = 0.0
    for b, t in enumerate(targets):
        label = t["labels"].item()
        iou = 1.0 if b == 0 else 0.0  # image 1's target only touches the predicted box
        w_area = 4 - 3 * 0.2
        for q in range(4):
            p = _sig(logits[b, q, label].item())
            for c in range(2):
                x = logits[b, q, c].item()
                if c == label:
                    ce += (_bce(x, 1) * _w_pos(p, iou) + _bce(x, 0) * _w_neg(p, iou)) * w_area
                else:
                    ce += _bce(x, 0) * _sig(x) ** 2
    assert math.isclose(losses["dn_loss_ce_rpn"].item(), 2 * ce / 8, rel_tol=1e-5)
