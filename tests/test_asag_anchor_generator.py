"""ASAG anchor generator: selection, patch NMS and placement, emission order, min/max anchors,
valid mask, early stops, fast path == full forward, small images, training patches.

Most tests replace the two MLPs by stubs whose raw outputs are chosen by hand (boxes and
confidences through the inverse sigmoid), so every expected number below is worked out in the
comments from the rules in docs/asag.md.
"""
import math

import pytest
import torch
from torch import nn

from fad.errors import ConfigError
from fad.modeling.asag import AdaptiveAnchorGenerator
from fad.modeling.asag.patches import ground_truth_patches, training_patches

H, W = 470, 630  # unpadded image; the batch is padded to 480 x 640
N1, N2 = 50, 20


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def raw_anchors(count: int, entries: dict) -> torch.Tensor:
    """[count * 5] raw MLP outputs: every anchor (0.5, 0.5, 0.5, 0.5) with conf 0.05, except
    `entries` {index: (cx, cy, w, h, conf)}."""
    out = torch.full((count, 5), logit(0.5))
    out[:, 4] = logit(0.05)
    for index, values in entries.items():
        out[index] = torch.tensor([logit(v) for v in values])
    return out.flatten()


class Stub(nn.Module):
    """Stands in for an MLP: `fn(x)` gives the raw output for input `x` [..., D]."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def coarse_stub(views: dict, batch_views: list | None = None) -> Stub:
    """Coarse MLP stub: view v (0-3 quadrants TL TR BL BR, 4 P6, 5-7 flips) gets
    raw_anchors(N1, views.get(v, {})); `batch_views` gives one such dict per image."""
    def fn(x):
        per_image = batch_views or [views] * x.shape[0]
        return torch.stack([torch.stack([raw_anchors(N1, v.get(k, {}))
                                         for k in range(x.shape[1])]) for v in per_image])
    return Stub(fn)


def patch_stub(entries_of_row) -> Stub:
    """Patch MLP stub: row p (patch p of the level, in probing order) gets
    raw_anchors(N2, entries_of_row(p))."""
    return Stub(lambda x: torch.stack([raw_anchors(N2, entries_of_row(p))
                                       for p in range(x.shape[0])]))


def make_generator(**kwargs) -> AdaptiveAnchorGenerator:
    torch.manual_seed(0)
    return AdaptiveAnchorGenerator(in_channels=8, hidden_dim=16, **kwargs).eval()


def features(batch: int = 1, size: tuple = (480, 640), seed: int = 0) -> list:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 8, size[0] // s, size[1] // s, generator=gen) for s in (8, 16, 32)]


# Scenario A (one 470 x 630 image). Coarse anchors (view, index): (cx, cy, w, h) in the view
# and conf; quadrant boxes map to the image as x = (col + v) / 2, size / 2.
COARSE_A = {
    0: {3: (0.5, 0.5, 0.1, 0.1, 0.5),      # TL: (157.5, 117.5) 31.5 x 23.5 px: selected
        4: (0.52, 0.5, 0.1, 0.1, 0.4)},    # 6.3 px right of it: selected, its patch NMS'ed
    1: {1: (0.5, 0.5, 0.1, 0.1, 0.75)},    # TR, conf > 0.7: emitted
    3: {7: (0.5, 0.5, 0.6, 0.6, 0.5),      # BR, 189 px wide (>= 16 * 7.5): emitted
        9: (0.98, 0.98, 0.1, 0.1, 0.6)},   # BR corner (623.7, 465.3): selected
    4: {6: (0.5, 0.5, 0.003, 0.5, 0.9),    # P6, 1.9 px wide: conf -> 0
        **{k: (0.1 + 0.2 * (k - 10), 0.5, 0.3, 0.3, 0.9) for k in range(10, 15)}},
}


def patch_entries(p: int) -> dict:
    """Every probed patch: a0 kept, a1 small + uncertain (conf 0.4 - 0.05 p: no ties), a2 at
    the right edge of the patch, a3 1/100 of the patch wide (< 3 px at P4 and P3)."""
    return {0: (0.5, 0.5, 0.2, 0.2, 0.9), 1: (0.3, 0.3, 0.05, 0.05, 0.4 - 0.05 * p),
            2: (0.99, 0.5, 0.2, 0.2, 0.9), 3: (0.5, 0.5, 0.01, 0.2, 0.9)}


def patch_box(entry: tuple, corner: tuple, stride: int) -> list:
    """Expected pixel cxcywh of a patch anchor."""
    cx, cy, w, h = entry[:4]
    return [(cx * 15 + corner[0]) * stride, (cy * 15 + corner[1]) * stride, w * 15 * stride,
            h * 15 * stride]


def coarse_box(view: int, entry: tuple) -> list:
    cx, cy, w, h = entry[:4]
    if view == 4:
        return [cx * W, cy * H, w * W, h * H]
    row, col = divmod(view, 2)
    return [(col + cx) / 2 * W, (row + cy) / 2 * H, w / 2 * W, h / 2 * H]


def to_xyxy(boxes: list) -> torch.Tensor:
    b = torch.tensor(boxes)
    return torch.cat([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], 1)


def scenario_a(**kwargs):
    gen = make_generator(**kwargs)
    gen.coarse_mlp = coarse_stub(COARSE_A)
    gen.patch_mlp = patch_stub(patch_entries)
    return gen


# Coarse emission, in (view, index) order: TR#1, BR#7, P6#10..14.
COARSE_EMITTED = [coarse_box(1, COARSE_A[1][1]), coarse_box(3, COARSE_A[3][7])] + [
    coarse_box(4, COARSE_A[4][k]) for k in range(10, 15)]
# P4 patches in NMS order: BR#9 (conf 0.6) at (623.7, 465.3) / 16 = (38.98, 29.08) -> floor(-7.5)
# = (31, 21), shifted to end at ceil(630/16) = 40, ceil(470/16) = 30 -> (25, 15); then TL#3 at
# (9.84, 7.34) -> (2, -1) -> clamped (2, 0). TL#4's square overlaps TL#3's (IoU 0.95): dropped.
P4_CORNERS = [(25, 15), (2, 0)]
# P3 patches around each P4 patch's a1 (row 0 first, conf 0.4 > 0.35): BR a1 at (472, 312) / 8
# = (59, 39) -> (51, 31); TL a1 at (104, 72) / 8 = (13, 9) -> (5, 1).
P3_CORNERS = [(51, 31), (5, 1)]
E = patch_entries
# P4 emission (a1 selected, a3 too small; BR a2 centre (637.6) >= 630: outside): BR a0, TL a0,
# TL a2.
P4_EMITTED = [patch_box(E(0)[0], P4_CORNERS[0], 16), patch_box(E(1)[0], P4_CORNERS[1], 16),
              patch_box(E(1)[2], P4_CORNERS[1], 16)]
# P3 (last stage: everything above 0.1): a0, a1, a2 of each patch.
P3_EMITTED = [patch_box(E(p)[k], P3_CORNERS[p], 8) for p in range(2) for k in range(3)]


def test_selection_nms_placement_and_order():
    gen = scenario_a()
    out = gen(features(), [(H, W)])
    assert [tuple(c) for c in out.records.patches[0].corners.tolist()] == P4_CORNERS
    assert [tuple(c) for c in out.records.patches[1].corners.tolist()] == P3_CORNERS
    expected = to_xyxy(COARSE_EMITTED + P4_EMITTED + P3_EMITTED)
    assert out.boxes.shape == (1, 16, 4) and out.valid.all()
    torch.testing.assert_close(out.boxes[0], expected, atol=1e-3, rtol=0)
    scores = [0.75, 0.5] + [0.9] * 5 + [0.9] * 3 + [0.9, 0.4, 0.9, 0.9, 0.35, 0.9]
    torch.testing.assert_close(out.scores[0], torch.tensor(scores), atol=1e-5, rtol=0)
    assert out.records.p6.shape == (1, 1, N1, 5) and out.records.p5.shape == (1, 4, N1, 5)
    assert [r.preds.shape for r in out.records.patches] == [(2, N2, 5)] * 2


@pytest.mark.parametrize("level, expected", [
    # the last stage emits everything above 0.1, including anchors it would have selected
    ("P4P6", to_xyxy(COARSE_EMITTED + [patch_box(E(0)[k], P4_CORNERS[0], 16) for k in (0, 1)]
                     + [patch_box(E(1)[k], P4_CORNERS[1], 16) for k in (0, 1, 2)])),
    ("P5P6", to_xyxy([coarse_box(0, COARSE_A[0][3]), coarse_box(0, COARSE_A[0][4]),
                      coarse_box(1, COARSE_A[1][1]), coarse_box(3, COARSE_A[3][7]),
                      coarse_box(3, COARSE_A[3][9])]
                     + [coarse_box(4, COARSE_A[4][k]) for k in range(10, 15)])),
])
def test_used_inference_level(level, expected):
    gen = scenario_a(used_inference_level=level)
    out = gen(features(), [(H, W)])
    torch.testing.assert_close(out.boxes[0], expected, atol=1e-3, rtol=0)
    assert len(out.records.patches) == {"P4P6": 1, "P5P6": 0}[level]


def test_max_anchors_keeps_the_most_confident_in_confidence_order():
    gen = scenario_a(max_anchors=7)
    out = gen(features(), [(H, W)])
    # the 13 anchors at 0.9 in emission order, then 0.75 ...: the first seven are P6#10..14 and
    # the P4 anchors BR a0, TL a0 (ties keep their order)
    expected = to_xyxy(COARSE_EMITTED[2:] + P4_EMITTED[:2])
    torch.testing.assert_close(out.boxes[0], expected, atol=1e-3, rtol=0)


def test_min_anchors_padding_and_valid_mask():
    # image 0: two confident big P6 anchors (#20, #30) and nothing uncertain -> fewer than 5
    # emitted, so the 5 most confident of all 250: #20, #30 (flat 220, 230), then the 0.05 ties
    # in index order: flat 0, 1, 2. Image 1: scenario A's coarse stage (7 emitted, probed too).
    big = {20: (0.3, 0.5, 0.4, 0.4, 0.9), 30: (0.7, 0.5, 0.4, 0.4, 0.9)}
    gen = make_generator()
    gen.coarse_mlp = coarse_stub({}, batch_views=[{4: big}, COARSE_A])
    gen.patch_mlp = patch_stub(patch_entries)
    out = gen(features(batch=2), [(H, W), (H, W)])
    assert out.valid.sum(1).tolist() == [5, 16]
    first = to_xyxy([coarse_box(4, big[20]), coarse_box(4, big[30])] + [coarse_box(0, (
        0.5, 0.5, 0.5, 0.5))] * 3)
    torch.testing.assert_close(out.boxes[0, :5], first, atol=1e-3, rtol=0)
    assert torch.equal(out.boxes[0, 5:], torch.tensor([[0.0, 0.0, W, H]]).expand(11, 4))
    assert out.scores[0, 5:].eq(0).all() and not out.valid[0, 5:].any()
    # image 1 is unaffected by its batch neighbour
    single = scenario_a()(features(), [(H, W)])
    torch.testing.assert_close(out.boxes[1], single.boxes[0], atol=1e-3, rtol=0)


def random_generator(seed: int, coarse_conf: float = 0.0, patch_conf: float = 0.0,
                     **kwargs) -> AdaptiveAnchorGenerator:
    """Random weights; small boxes (w, h bias -3) and confidence biases as given."""
    torch.manual_seed(seed)
    gen = AdaptiveAnchorGenerator(in_channels=8, hidden_dim=16, **kwargs).eval()
    with torch.no_grad():
        for mlp, conf in ((gen.coarse_mlp, coarse_conf), (gen.patch_mlp, patch_conf)):
            bias = mlp[-1].bias.view(-1, 5)
            bias[:, 2:4] = -3.0
            bias[:, 4] = conf
    return gen


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("case, coarse_conf, patch_conf, probed", [
    ("probes P4 and P3", 0.0, 0.0, 2),
    ("nothing selected", 8.0, 0.0, 0),     # every coarse conf > 0.7
    ("stops at P4", 0.0, 8.0, 1),          # no P4 anchor is uncertain
])
def test_fast_path_equals_forward(seed, case, coarse_conf, patch_conf, probed):
    gen = random_generator(seed, coarse_conf, patch_conf)
    calls = []
    for index, layer in enumerate(gen.compress):
        layer.register_forward_hook(lambda *_, i=index: calls.append(i))
    feats, sizes = features(seed=seed), [(H - 7 * seed, W - 11 * seed)]
    with torch.no_grad():
        full = gen(feats, sizes)
        assert len(full.records.patches) == probed, case
        calls.clear()
        fast = gen(feats, sizes, fast_inference=True)
    assert fast.records is None
    assert sorted(calls) == [0, 1, 2][2 - probed:]  # only the levels it probes
    assert torch.equal(fast.boxes, full.boxes) and torch.equal(fast.scores, full.scores)
    assert torch.equal(fast.valid, full.valid)


@pytest.mark.parametrize("size, probed", [((100, 150), True), ((239, 239), True),
                                           ((10, 12), False)])  # P5 crop of round(10/32) -> 1
def test_images_smaller_than_one_p4_patch(size, probed):
    padded = tuple(-(-s // 32) * 32 for s in size)
    gen = random_generator(0)
    feats = features(size=padded)
    full = gen(feats, [size])
    assert full.valid.sum() >= 5 and bool(full.records.patches) == probed  # (every box < 3 px)
    # patches start at 0 and read zeros past the map
    assert all(r.corners.eq(0).all() for r in full.records.patches if padded[0] < 240)
    fast = gen(feats, [size], fast_inference=True)
    assert torch.equal(fast.boxes, full.boxes)
    gen.train()
    out = gen(feats, [size], [{"boxes": torch.tensor([[0.5, 0.5, 0.1, 0.1]])}], epoch=1)
    assert [len(r.corners) for r in out.records.patches] == [4, 4]


def test_training_flips_and_patches():
    gen = random_generator(0).train()
    targets = [{"boxes": torch.tensor([[0.25, 0.25, 0.05, 0.05], [0.26, 0.25, 0.05, 0.05],
                                       [0.7, 0.7, 0.5, 0.5]])},
               {"boxes": torch.zeros(0, 4)}]
    feats = features(batch=2)
    seen = []
    gen.coarse_norm.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    out = gen(feats, [(H, W), (H, W)], targets, epoch=0)
    assert out.records.p6.shape == (2, 4, N1, 5)
    views = seen[0].unflatten(2, (15, 15))  # [B, 8 views, y, x, C]: TL TR BL BR P6 h v hv
    p6 = views[:, 4]  # [B, y, x, C]
    assert torch.equal(views[:, 5], p6.flip(2))
    assert torch.equal(views[:, 6], p6.flip(1))
    assert torch.equal(views[:, 7], p6.flip(1).flip(2))
    for rec in out.records.patches:
        # epoch 0: image 0 has one ground-truth patch (the two small boxes overlap: NMS) that
        # emits, topped up with 3 random loss-only patches; image 1 has 4 random ones
        assert rec.owners.tolist() == [0] * 4 + [1] * 4
        assert rec.loss_only.tolist() == [False] + [True] * 3 + [True] * 4
    out = gen(feats, [(H, W), (H, W)], targets, epoch=1)
    for rec in out.records.patches:
        # epoch 1: predicted patches, each image topped up to exactly 4 (loss-only, at the end)
        for image in range(2):
            mine = rec.loss_only[rec.owners == image]
            real = int((~mine).sum())
            assert len(mine) == max(real, 4) and not mine[:real].any()


def test_ground_truth_patches_cover_their_box():
    torch.manual_seed(0)
    wh = torch.tensor([640.0, 480.0])
    boxes = torch.tensor([[0.5, 0.5, 0.05, 0.05], [0.9, 0.95, 0.04, 0.04],
                          [0.5, 0.5, 0.9, 0.9]])  # the last is too large for a P4 patch
    for _ in range(20):
        corners = ground_truth_patches(boxes, wh, 16, 15)
        assert len(corners) == 2
        px = boxes[:2] * wh.repeat(2)
        x1y1 = (px[:, :2] + px[:, 2:] / 2) / 16
        x0y0 = (px[:, :2] - px[:, 2:] / 2) / 16
        assert (corners >= 0).all() and (corners + 15 >= x1y1.floor()).all()
        assert (corners <= x0y0.floor()).all()
        assert (corners + 15 <= torch.tensor([40, 30])).all()


def test_top_ups_stop_at_four():
    wh = torch.tensor([[640.0, 480.0]] * 2)
    predicted = torch.tensor([[3, 3], [20, 10], [1, 1], [4, 4], [5, 5]])
    owners = torch.tensor([0, 0, 1, 1, 1])
    targets = [{"boxes": torch.tensor([[0.5, 0.5, 0.05, 0.05]])}, {"boxes": torch.zeros(0, 4)}]
    corners, own, loss_only = training_patches(predicted, owners, targets, wh, 16, 15, False)
    assert own.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert loss_only.tolist() == [False, False, True, True, False, False, False, True]
    assert corners[:2].tolist() == [[3, 3], [20, 10]] and corners[4:7].tolist() == predicted[
        2:].tolist()


def test_bad_settings_and_inputs():
    with pytest.raises(ValueError, match="used_inference_level must be one of P3P6, P4P6, P5P6"):
        AdaptiveAnchorGenerator(used_inference_level="P2P6")
    with pytest.raises(ValueError, match="num_queries must be one of 100, 300, got 200"):
        AdaptiveAnchorGenerator(num_queries=200)
    gen = make_generator()
    with pytest.raises(ConfigError, match="FAST_INFERENCE"):
        gen(features(batch=2), [(H, W)] * 2, fast_inference=True)
    with pytest.raises(ValueError, match="targets"):
        gen.train()(features(), [(H, W)])


def test_initialisation():
    gen = AdaptiveAnchorGenerator(in_channels=8, hidden_dim=16, num_queries=300)
    assert gen.coarse_mlp[-1].out_features == 5 * 150 and gen.patch_mlp[-1].out_features == 250
    assert (gen.min_anchors, gen.max_anchors, gen.emit_threshold) == (50, 500, 0.05)
    assert not torch.equal(gen.coarse_norm.weight, torch.ones(225, 8))  # xavier, not 1
    assert gen.coarse_pos.eq(0).all() and all(p.eq(0).all() for p in gen.patch_pos.values())
