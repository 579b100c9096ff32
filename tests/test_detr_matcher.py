"""Hungarian matcher vs brute force over permutations; set criterion vs hand-computed losses."""
import itertools
import math

import pytest
import torch

from fad.modeling.detr.criterion import SetCriterion
from fad.modeling.set_prediction import HungarianMatcher


def _giou(a, b):
    """GIoU of two cxcywh boxes, by hand."""
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = a[2] * a[3] + b[2] * b[3] - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union - (hull - union) / hull


def _cost(logit_row, box, label, tgt_box, alpha=0.25, gamma=2.0):
    """Matching cost of one (query, target) pair with the default weights 2 / 5 / 2."""
    p = 1 / (1 + math.exp(-float(logit_row[label])))
    pos = alpha * (1 - p) ** gamma * -math.log(p + 1e-8)
    neg = (1 - alpha) * p ** gamma * -math.log(1 - p + 1e-8)
    l1 = sum(abs(float(x) - float(y)) for x, y in zip(box, tgt_box))
    giou = _giou([float(v) for v in box], [float(v) for v in tgt_box])
    return 2 * (pos - neg) + 5 * l1 - 2 * giou


def _random_case(gen, q, t, c=3):
    logits = torch.randn(q, c, generator=gen) * 2
    boxes = torch.rand(q, 4, generator=gen) * 0.5 + torch.tensor([0.25, 0.25, 0.05, 0.05])
    labels = torch.randint(0, c, (t,), generator=gen)
    tgt = torch.rand(t, 4, generator=gen) * 0.5 + torch.tensor([0.25, 0.25, 0.05, 0.05])
    return logits, boxes, labels, tgt


def test_cost_matrix_matches_the_hand_formula():
    gen = torch.Generator().manual_seed(1)
    logits, boxes, labels, tgt = _random_case(gen, 4, 3)
    cost = HungarianMatcher().cost_matrix(logits, boxes, labels, tgt)
    for i in range(4):
        for j in range(3):
            want = _cost(logits[i], boxes[i], labels[j], tgt[j])
            assert cost[i, j].item() == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize("q,t", [(3, 2), (4, 4), (5, 3), (2, 3), (4, 1)])
def test_matcher_is_optimal_against_brute_force(q, t):
    matcher = HungarianMatcher()
    gen = torch.Generator().manual_seed(q * 10 + t)
    for _ in range(5):
        logits, boxes, labels, tgt = _random_case(gen, q, t)
        cost = [[_cost(logits[i], boxes[i], labels[j], tgt[j]) for j in range(t)] for i in range(q)]
        if q >= t:  # every target gets a distinct query
            best = min(sum(cost[p[j]][j] for j in range(t))
                       for p in itertools.permutations(range(q), t))
        else:  # every query gets a distinct target
            best = min(sum(cost[i][p[i]] for i in range(q))
                       for p in itertools.permutations(range(t), q))
        rows, cols = matcher(logits[None], boxes[None], [{"labels": labels, "boxes": tgt}])[0]
        assert len(rows) == min(q, t) and len(set(rows.tolist())) == len(rows)
        assert len(set(cols.tolist())) == len(cols)
        got = sum(cost[i][j] for i, j in zip(rows.tolist(), cols.tolist()))
        assert got == pytest.approx(best, abs=1e-4)


def test_matcher_respects_the_query_mask_and_empty_targets():
    gen = torch.Generator().manual_seed(7)
    logits, boxes, labels, tgt = _random_case(gen, 5, 3)
    mask = torch.tensor([[True, False, True, False, True]])
    matcher = HungarianMatcher()
    rows, cols = matcher(logits[None], boxes[None], [{"labels": labels, "boxes": tgt}], mask)[0]
    assert sorted(rows.tolist()) == [0, 2, 4]
    cost = [[_cost(logits[i], boxes[i], labels[j], tgt[j]) for j in range(3)] for i in (0, 2, 4)]
    best = min(sum(cost[p[j]][j] for j in range(3)) for p in itertools.permutations(range(3), 3))
    got = sum(cost[(0, 2, 4).index(i)][j] for i, j in zip(rows.tolist(), cols.tolist()))
    assert got == pytest.approx(best, abs=1e-4)
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    rows, cols = matcher(logits[None], boxes[None], [empty])[0]
    assert rows.numel() == 0 and cols.numel() == 0
    with pytest.raises(ValueError, match="cost_class, cost_bbox and cost_giou are all 0"):
        HungarianMatcher(0, 0, 0)


def _focal(x, t, alpha=0.25, gamma=2.0):
    p = 1 / (1 + math.exp(-x))
    ce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    return (alpha * t + (1 - alpha) * (1 - t)) * ce * (1 - p_t) ** gamma


def test_criterion_losses_by_hand():
    weights = {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    crit = SetCriterion(2, HungarianMatcher(), weights)
    logits = torch.tensor([[[2.0, -1.0], [-3.0, 0.5]]])  # 2 queries, 2 classes
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.2]]])
    tgt = {"labels": torch.tensor([0]), "boxes": torch.tensor([[0.45, 0.5, 0.2, 0.3]])}
    out = {"pred_logits": logits, "pred_boxes": boxes,
           "aux_outputs": [{"pred_logits": logits, "pred_boxes": boxes}],
           "enc_outputs": {"pred_logits": logits, "pred_boxes": boxes, "binary": True}}
    losses = crit(out, [tgt])
    assert set(losses) == {f"{n}{s}" for n in weights for s in ("", "_0", "_enc")}
    # query 0 (close box, confident class 0) is matched to the target
    onehot = [[1, 0], [0, 0]]
    ce = sum(_focal(float(logits[0, i, c]), onehot[i][c]) for i in range(2) for c in range(2))
    l1 = 0.05 + 0.0 + 0.0 + 0.1
    giou = _giou([0.5, 0.5, 0.2, 0.2], [0.45, 0.5, 0.2, 0.3])
    assert losses["loss_ce"].item() == pytest.approx(2 * ce, rel=1e-5)
    assert losses["loss_bbox"].item() == pytest.approx(5 * l1, rel=1e-5)
    assert losses["loss_giou"].item() == pytest.approx(2 * (1 - giou), rel=1e-5)
    assert losses["loss_ce_0"].item() == pytest.approx(losses["loss_ce"].item())


def test_criterion_binary_labels_masks_and_empty_targets():
    crit = SetCriterion(3, HungarianMatcher(), {"loss_ce": 1.0, "loss_bbox": 1.0, "loss_giou": 1.0})
    logits = torch.zeros(1, 3, 3)
    logits[..., 0] = 1.0
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1], [0.8, 0.8, 0.1, 0.1]]])
    tgt = [{"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    all_neg = 3 * _focal(1.0, 0) + 6 * _focal(0.0, 0)
    binary = crit.set_losses({"pred_logits": logits, "pred_boxes": boxes, "binary": True}, tgt, 1.0)
    want = all_neg - _focal(1.0, 0) + _focal(1.0, 1)
    assert binary["loss_ce"].item() == pytest.approx(want, rel=1e-5)
    real = crit.set_losses({"pred_logits": logits, "pred_boxes": boxes}, tgt, 1.0)
    want = all_neg - _focal(0.0, 0) + _focal(0.0, 1)
    assert real["loss_ce"].item() == pytest.approx(want, rel=1e-5)
    masked = crit.set_losses({"pred_logits": logits, "pred_boxes": boxes,
                              "query_mask": torch.tensor([[True, False, False]])}, tgt, 1.0)
    want = _focal(1.0, 0) + _focal(0.0, 0) + _focal(0.0, 1)
    assert masked["loss_ce"].item() == pytest.approx(want, rel=1e-5)
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]
    losses = crit({"pred_logits": logits, "pred_boxes": boxes}, empty)
    assert losses["loss_bbox"].item() == 0 and losses["loss_giou"].item() == 0
    assert losses["loss_ce"].item() == pytest.approx(all_neg, rel=1e-5)  # num_boxes clamps to 1
