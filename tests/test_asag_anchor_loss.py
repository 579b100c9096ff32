"""ASAG anchor losses: quality focal loss and weights by hand, P6 flip targets (and the
reference's bug), frame targets, matcher costs vs brute force, ignore rule, loss assembly."""
import itertools
import math

import pytest
import torch
from torchvision.ops import box_convert, generalized_box_iou

from fad.modeling.asag import (
    AnchorLoss,
    AnchorRecords,
    PatchRecord,
    flip_p6_targets,
    quality_focal_loss,
)
from fad.modeling.asag.anchor_loss import frame_targets
from fad.modeling.asag.criterion import dual_weights


def test_quality_focal_loss_by_hand():
    logits = torch.zeros(3)  # sigmoid 0.5
    loss = quality_focal_loss(logits, torch.tensor([0.8, 0.0, 0.0]),
                              torch.tensor([True, False, False]), torch.tensor([2.0, 0.0, 0.0]),
                              torch.tensor([False, False, True]))
    # positive: BCE(0, 0.8) = log 2, times |0.8 - 0.5|^2 = 0.09, times area weight 2
    # negative: BCE(0, 0) = log 2 times 0.5^2; ignored: 0
    expected = torch.tensor([math.log(2) * 0.09 * 2, math.log(2) * 0.25, 0.0])
    torch.testing.assert_close(loss, expected)


def test_box_quality_weight_range():
    # the anchor box losses use the dual weighting's w_pos
    # s^0.4 IoU^0.6 = 1 -> sigmoid(3) / sigmoid(3) = 1; = 0 -> sigmoid(-1.5) / sigmoid(3)
    weights, _ = dual_weights(torch.tensor([1.0, 0.0, 0.5]), torch.tensor([1.0, 0.7, 0.0]))
    low = 1 / (1 + math.exp(1.5)) * (1 + math.exp(-3))
    torch.testing.assert_close(weights, torch.tensor([1.0, low, low]))
    assert abs(low - 0.1915) < 1e-4


def test_p6_flip_targets_and_reference_bug():
    box = torch.tensor([[0.2, 0.3, 0.1, 0.2]])
    fixed = torch.cat(flip_p6_targets(box))
    torch.testing.assert_close(fixed, torch.tensor([
        [0.2, 0.3, 0.1, 0.2], [0.8, 0.3, 0.1, 0.2], [0.2, 0.7, 0.1, 0.2], [0.8, 0.7, 0.1, 0.2]]))
    # the reference's numbers: the xyxy formula on cxcywh
    buggy = torch.cat(flip_p6_targets(box, reference_bug=True))
    torch.testing.assert_close(buggy, torch.tensor([
        [0.2, 0.3, 0.1, 0.2], [0.9, 0.3, 0.8, 0.2], [0.2, 0.8, 0.1, 0.7], [0.9, 0.8, 0.8, 0.7]]))


def test_frame_targets_by_hand():
    boxes = torch.tensor([[0.3, 0.2, 0.2, 0.1],     # inside TL: xyxy (.2, .15, .4, .25) * 2
                          [0.45, 0.1, 0.2, 0.1],    # inside TL, clipped at x = 0.5
                          [0.6, 0.1, 0.1, 0.1]])    # centre in TR
    tl = frame_targets(boxes, torch.tensor([0.0, 0.0]), torch.tensor([0.5, 0.5]), False)
    torch.testing.assert_close(tl, torch.tensor([[0.6, 0.4, 0.4, 0.2], [0.85, 0.2, 0.3, 0.2]]))
    # a patch frame 0.25 wide: the 0.2-wide boxes fit, with limit_size
    patch = frame_targets(boxes, torch.tensor([0.25, 0.0]), torch.tensor([0.25, 0.25]), True)
    # box 0: xyxy (.2, .15, .4, .25) -> clipped x0 .25 -> ((0, .6, .6, 1.0)) -> cxcywh
    torch.testing.assert_close(patch, torch.tensor([[0.3, 0.8, 0.6, 0.4],
                                                    [0.7, 0.4, 0.6, 0.4]]))
    small = frame_targets(boxes, torch.tensor([0.25, 0.0]), torch.tensor([0.15, 0.25]), True)
    assert len(small) == 0  # every box is wider than the patch


def hand_cost(preds: torch.Tensor, tgt: torch.Tensor, inverse: bool) -> torch.Tensor:
    """2 * (focal pos - neg) + 5 * L1 + 2 * (-GIoU), times 4 - 3 sqrt(wh) (P6: 1 + 3 sqrt)."""
    p = preds[:, 4].sigmoid()[:, None]
    pos = 0.25 * (1 - p) ** 2 * -(p + 1e-8).log()
    neg = 0.75 * p ** 2 * -(1 - p + 1e-8).log()
    l1 = (preds[:, None, :4] - tgt[None]).abs().sum(-1)
    giou = generalized_box_iou(box_convert(preds[:, :4], "cxcywh", "xyxy"),
                               box_convert(tgt, "cxcywh", "xyxy"))
    side = (tgt[:, 2] * tgt[:, 3]).sqrt()
    weight = 1 + 3 * side if inverse else 4 - 3 * side
    return (2 * (pos - neg) + 5 * l1 - 2 * giou) * weight[None]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("inverse", [False, True])
def test_matching_is_the_brute_force_optimum(seed, inverse):
    gen = torch.Generator().manual_seed(seed)
    preds = torch.cat([torch.rand(5, 2, generator=gen) * 0.6 + 0.2,
                       torch.rand(5, 2, generator=gen) * 0.5 + 0.05,
                       torch.randn(5, 1, generator=gen)], 1)
    tgt = torch.cat([torch.rand(3, 2, generator=gen) * 0.6 + 0.2,
                     torch.rand(3, 2, generator=gen) * 0.5 + 0.05], 1)
    loss = AnchorLoss()
    matcher = loss.p6_matcher if inverse else loss.matcher
    rows, cols = matcher(preds[None, :, 4:], preds[None, :, :4],
                         [{"labels": torch.zeros(3, dtype=torch.int64), "boxes": tgt}])[0]
    cost = hand_cost(preds, tgt, inverse)
    best = min(itertools.permutations(range(5), 3),
               key=lambda rs: float(sum(cost[r, c] for c, r in enumerate(rs))))
    assert dict(zip(cols.tolist(), rows.tolist())) == dict(enumerate(best))


def test_frame_losses_by_hand_with_ignore():
    # one frame, one target; anchor 0 is the target itself (matched, IoU 1), anchor 1 overlaps
    # it with IoU 0.64 (ignored), anchor 2 is far (negative)
    tgt = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    preds = torch.tensor([[[0.5, 0.5, 0.2, 0.2, 0.0], [0.5, 0.5, 0.16, 0.16, 1.0],
                           [0.1, 0.1, 0.05, 0.05, -1.0]]], requires_grad=True)
    sums = AnchorLoss().frame_losses(preds, [tgt], inverse=False)
    area = 4 - 3 * 0.2
    p2 = torch.sigmoid(torch.tensor(-1.0))
    ce = math.log(2) * 0.25 * area + float(-torch.log(1 - p2) * p2 ** 2)
    torch.testing.assert_close(sums, torch.tensor([ce, 0.0, 0.0]), atol=1e-5, rtol=1e-6)
    sums.sum().backward()
    assert preds.grad[0, 1].abs().sum() == 0  # the ignored anchor gets no gradient


def test_box_losses_weighted_by_quality_and_area():
    tgt = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    preds = torch.tensor([[[0.5, 0.5, 0.2, 0.4, 0.0]]])  # IoU 0.5, L1 0.2, GIoU 0.5
    sums = AnchorLoss().frame_losses(preds, [tgt], inverse=True)
    scale = float(dual_weights(torch.tensor(0.5), torch.tensor(0.5))[0]) * (1 + 3 * 0.2)
    torch.testing.assert_close(sums[1:], torch.tensor([0.2 * scale, 0.5 * scale]))


def test_anchor_loss_assembly():
    torch.manual_seed(0)

    def preds(*shape):
        return torch.cat([torch.rand(*shape, 4) * 0.5 + 0.25, torch.randn(*shape, 1)], -1)

    targets = [{"boxes": torch.tensor([[0.3, 0.3, 0.1, 0.1], [0.6, 0.7, 0.3, 0.2]]),
                "labels": torch.tensor([1, 2])},
               {"boxes": torch.tensor([[0.5, 0.5, 0.05, 0.05]]), "labels": torch.tensor([0])}]
    image_wh = torch.tensor([[640.0, 480.0], [320.0, 320.0]])
    patches = [PatchRecord(16, preds(3, 20), torch.tensor([[5, 3], [0, 0], [3, 2]]),
                           torch.tensor([0, 1, 1]), torch.tensor([False, True, False])),
               PatchRecord(8, preds(1, 20), torch.tensor([[15, 12]]), torch.tensor([0]),
                           torch.tensor([False]))]
    records = AnchorRecords(preds(2, 4, 50), preds(2, 4, 50), patches, image_wh)
    loss = AnchorLoss()
    out = loss(records, targets)

    boxes = [t["boxes"] for t in targets]
    total = loss.frame_losses(records.p6.flatten(0, 1),
                              [f for b in boxes for f in flip_p6_targets(b)], True)
    quads = [(0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (0.5, 0.5)]
    total += loss.frame_losses(records.p5.flatten(0, 1), [
        frame_targets(b, torch.tensor(q), torch.tensor([0.5, 0.5]), False)
        for b in boxes for q in quads], False)
    # patch frames: image 0 (640 x 480) P4 patch at cells (5, 3) spans x 80/640 .. 320/640
    frames = [(0, (80 / 640, 48 / 480), (240 / 640, 240 / 480)),
              (1, (0.0, 0.0), (0.75, 0.75)), (1, (48 / 320, 32 / 320), (0.75, 0.75)),
              (0, (120 / 640, 96 / 480), (120 / 640, 120 / 480))]
    patch_targets = [frame_targets(boxes[i], torch.tensor(o), torch.tensor(e), True)
                     for i, o, e in frames]
    assert len(patch_targets[0]) == 1 and len(patch_targets[3]) == 1
    total += loss.frame_losses(torch.cat([p.preds for p in patches]), patch_targets,
                               False) * 4 / 4
    expected = total * torch.tensor([8.0, 4.0, 2.0]) / 3  # 3 targets in the batch
    got = torch.stack([out["loss_ce_anchor"], out["loss_bbox_anchor"], out["loss_giou_anchor"]])
    torch.testing.assert_close(got, expected)
