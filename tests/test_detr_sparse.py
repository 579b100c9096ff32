"""Sparse DETR pieces: token budget, selection, per-image scatter, rho = 1 equals the dense
encoder, the scoring network, and the DAM target on hand-placed sampling points."""
import pytest
import torch
import torch.nn.functional as F

from fad.modeling.detr.dam import attention_to_token_map, dam_loss, dam_target, token_coverage
from fad.modeling.detr.encoder import (
    DeformableEncoder,
    EncoderLayer,
    encoder_reference_points,
    valid_ratios,
)
from fad.modeling.detr.sparse_encoder import (
    ScoringNetwork,
    SparseEncoder,
    gather_tokens,
    select_tokens,
    sparse_token_counts,
    token_budget,
)

SHAPES = [(6, 6), (3, 3)]


def _mask(valid_widths):
    """Per-image padding masks of both levels (flattened) for the given level-0 valid widths."""
    n = len(valid_widths)
    levels = []
    for h, w in SHAPES:
        m = torch.zeros(n, h, w, dtype=torch.bool)
        for i, vw in enumerate(valid_widths):
            m[i, :, -(-vw * w // SHAPES[0][1]):] = True
        levels.append(m)
    return levels, torch.cat([m.flatten(1) for m in levels], 1)


def _encoder_inputs(valid_widths, c=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    levels, mask = _mask(valid_widths)
    s = mask.shape[1]
    src = torch.randn(len(valid_widths), s, c, generator=gen)
    pos = torch.randn(len(valid_widths), s, c, generator=gen)
    shapes = torch.tensor(SHAPES)
    start = torch.tensor([0, SHAPES[0][0] * SHAPES[0][1]])
    ratios = torch.stack([valid_ratios(m) for m in levels], 1)
    return src, pos, shapes, start, ratios, mask


def test_token_budget_formula():
    mask = torch.zeros(3, 12, dtype=torch.bool)
    mask[1, 7:] = True  # 7 valid
    mask[2, 3:] = True  # 3 valid
    # floor(3.6)+1, floor(2.1)+1, floor(0.9)+1
    assert sparse_token_counts(mask, 0.3).tolist() == [4, 3, 1]
    assert sparse_token_counts(mask, 0.5).tolist() == [7, 4, 2]
    assert sparse_token_counts(mask, 1.0).tolist() == [12, 8, 4]  # capped at S = 12
    # the host-side bound K: the count of an image without padding, >= every k_i
    assert [token_budget(12, rho) for rho in (0.3, 0.5, 1.0)] == [4, 7, 12]


@pytest.mark.parametrize("rho", [0.1, 0.2, 0.3, 0.5, 0.7])
def test_token_counts_equal_the_original_float32_formula(rho):
    """k_i = floor(rho * valid) + 1 in integer arithmetic equals the original Sparse DETR's
    `(valid_token_nums * rho).int() + 1` (float32) for 0..30000 valid tokens (a float64
    product truncated by floor gave 62 for 90 tokens at rho 0.7, the original 63), and the
    host bound K is the count of an image without padding."""
    valid = torch.arange(0, 30001)
    expected = (valid * rho).int() + 1
    s = 30000
    mask = torch.arange(s)[None, :] >= valid[:, None]  # image i: valid[i] tokens, then padding
    assert torch.equal(sparse_token_counts(mask, rho), expected.clamp(max=s).long())
    assert [token_budget(n, rho) for n in (1, 90, 12345, s)] == [
        min(int(expected[n]), n) for n in (1, 90, 12345, s)]


def test_token_budget_follows_a_dynamic_size_under_torch_export():
    """K from a symbolic token count stays symbolic: an exported graph keeps K = floor(rho*S)+1
    at sizes other than the traced one (an int() of a float product pinned the traced K)."""
    class Keep(torch.nn.Module):
        def forward(self, x):
            return x[:, :token_budget(x.shape[1], 0.1)]

    exported = torch.export.export(Keep(), (torch.rand(1, 50),),
                                   dynamic_shapes={"x": {1: torch.export.Dim.AUTO}}).module()
    assert [exported(torch.rand(1, s)).shape[1] for s in (50, 77, 123)] == [6, 8, 13]


def test_selection_ranks_padding_last_and_best_first():
    logits = torch.tensor([[0.1, 5.0, -1.0, 9.0], [3.0, 2.0, 1.0, 8.0]])
    mask = torch.tensor([[False, False, False, False], [False, False, False, True]])
    idx = select_tokens(logits, mask, 4)
    assert idx[0, :2].tolist() == [3, 1]
    assert idx[1].tolist() == [0, 1, 2, 3]


def _layer(c=16, levels=2):
    torch.manual_seed(3)
    return EncoderLayer(c, 32, 0.0, levels, 2, 2)


def test_sparse_encoder_scatters_only_the_first_k_tokens_per_image():
    src, pos, shapes, start, ratios, mask = _encoder_inputs([6, 4])
    sparse = SparseEncoder(_layer(), 1).eval()
    idx = torch.tensor([[5, 30, 2], [7, 1, 40]])
    counts = torch.tensor([3, 1])
    with torch.no_grad():
        memory, inter = sparse(src, pos, shapes, start, ratios, mask, idx, counts,
                               level_shapes=SHAPES)
        ref = encoder_reference_points(SHAPES, ratios)
        queries = sparse.layers[0](gather_tokens(src, idx), gather_tokens(pos, idx),
                                   gather_tokens(ref, idx), src, shapes, start, mask, SHAPES)
    expected = src.clone()
    expected[0, [5, 30, 2]] = queries[0]
    expected[1, 7] = queries[1, 0]
    assert torch.allclose(memory, expected, atol=1e-6)
    assert torch.equal(memory[1, 1], src[1, 1]) and torch.equal(memory[1, 40], src[1, 40])
    assert len(inter) == 1 and torch.allclose(inter[0], queries, atol=1e-6)
    with pytest.raises(ValueError, match="topk_idx"):
        sparse(src, pos, shapes, start, ratios, mask, level_shapes=SHAPES)


def test_rho_one_sparse_encoder_equals_the_dense_encoder():
    src, pos, shapes, start, ratios, mask = _encoder_inputs([6, 4])
    dense = DeformableEncoder(_layer(), 2).eval()
    sparse = SparseEncoder(_layer(), 2).eval()
    sparse.load_state_dict(dense.state_dict())
    scores = torch.randn(mask.shape)  # any order: rho = 1 keeps every valid token
    counts = sparse_token_counts(mask, 1.0)
    idx = select_tokens(scores, mask, token_budget(mask.shape[1], 1.0))
    with torch.no_grad():
        want, _ = dense(src, pos, shapes, start, ratios, mask, level_shapes=SHAPES)
        got, inter = sparse(src, pos, shapes, start, ratios, mask, idx, counts,
                            level_shapes=SHAPES)
    valid = ~mask
    assert torch.allclose(got[valid], want[valid], atol=1e-5)
    assert torch.allclose(got[0], want[0], atol=1e-5)  # no padding: every token
    # the last layer's selected outputs are the memory, permuted by the selection
    assert torch.allclose(inter[-1][0], want[0, idx[0]], atol=1e-5)


def test_scoring_network_masks_padding_and_sees_the_global_mean():
    torch.manual_seed(0)
    net = ScoringNetwork(16)
    x = torch.randn(2, 10, 16)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[1, 6:] = True
    logits = net(x, mask)
    assert logits.shape == (2, 10)
    assert (logits[1, 6:] == logits.min()).all()
    x2 = x.clone()
    x2[0, 9] += 3.0 * torch.randn(16)  # token 9's local features, and every token's global part
    logits2 = net(x2, mask)
    assert not torch.allclose(logits2[0, :9], logits[0, :9])
    assert torch.allclose(logits2[1], logits[1])


def _loc(px, py, w, h, half_pixel=True):
    """Normalised location of pixel coordinate (px, py) on a w x h map."""
    shift = 0.5 if half_pixel else 0.0
    return [(px + shift) / w, (py + shift) / h]


def test_dam_bilinear_split_of_a_hand_placed_point():
    shapes = [(4, 4), (2, 3)]
    locs = torch.zeros(1, 1, 2, 1, 2)  # [N, Q, L, P, 2]
    weights = torch.zeros(1, 1, 2, 1)
    locs[0, 0, 0, 0] = torch.tensor(_loc(1.25, 2.5, 4, 4))
    weights[0, 0, 0, 0] = 0.8
    locs[0, 0, 1, 0] = torch.tensor(_loc(2.0, 0.0, 3, 2))  # exactly on token (x=2, y=0) of level 1
    weights[0, 0, 1, 0] = 0.2
    dam = attention_to_token_map(locs, weights, shapes)
    want = torch.zeros(1, 22)
    want[0, 2 * 4 + 1], want[0, 2 * 4 + 2] = 0.8 * 0.75 * 0.5, 0.8 * 0.25 * 0.5
    want[0, 3 * 4 + 1], want[0, 3 * 4 + 2] = 0.8 * 0.75 * 0.5, 0.8 * 0.25 * 0.5
    want[0, 16 + 2] = 0.2
    assert torch.allclose(dam, want, atol=1e-6)
    assert dam.sum().item() == pytest.approx(1.0)
    # without the half-pixel shift the same normalised location lands half a pixel further
    # right/down
    locs[0, 0, 1, 0] = torch.tensor(_loc(1.0, 1.0, 3, 2, half_pixel=False))
    dam = attention_to_token_map(locs, weights, shapes, half_pixel=False)
    assert dam[0, 16 + 1 * 3 + 1].item() == pytest.approx(0.2)


def test_dam_drops_corners_outside_the_map():
    shapes = [(4, 4)]
    locs = torch.tensor([_loc(-0.5, 0.0, 4, 4), _loc(-3.0, -3.0, 4, 4), _loc(3.0, 3.5, 4, 4)])
    locs = locs.view(1, 3, 1, 1, 2)
    weights = torch.ones(1, 3, 1, 1)
    dam = attention_to_token_map(locs, weights, shapes)
    # half of the first point, the other corner is off-map
    assert dam[0, 0].item() == pytest.approx(0.5)
    # half of the third point (row 3.5 -> rows 3 and 4)
    assert dam[0, 15].item() == pytest.approx(0.5)
    assert dam.sum().item() == pytest.approx(1.0)


def test_dam_is_the_adjoint_of_bilinear_sampling():
    """Scattering weights = gradient of sum(w * grid_sample(V)) w.r.t. V (random, partly
    off-map)."""
    gen = torch.Generator().manual_seed(0)
    shapes, start = SHAPES, [0, 36]
    locs = torch.rand(2, 5, 3, 2, 4, 2, generator=gen) * 1.4 - 0.2  # [N, Q, M, L, P, 2]
    weights = torch.rand(2, 5, 3, 2, 4, generator=gen)
    dam = attention_to_token_map(locs, weights, shapes)
    for level, (h, w) in enumerate(SHAPES):
        value = torch.zeros(2, 1, h, w, requires_grad=True)
        grid = (2 * locs[:, :, :, level] - 1).reshape(2, 1, -1, 2)
        sampled = F.grid_sample(value, grid, mode="bilinear", padding_mode="zeros",
                                align_corners=False)
        (sampled.view(2, -1) * weights[:, :, :, level].reshape(2, -1)).sum().backward()
        begin = start[level]
        assert torch.allclose(dam[:, begin:begin + h * w], value.grad.view(2, -1), atol=1e-5)
    # points whose four corners are all on the map keep their whole weight
    in_locs = torch.rand(1, 7, 1, 3, 2, generator=gen) * 0.6 + 0.2  # [N, Q, L=1, P, 2]
    in_weights = torch.rand(1, 7, 1, 3, generator=gen)
    total = attention_to_token_map(in_locs, in_weights, [(6, 6)])
    assert total.sum().item() == pytest.approx(in_weights.sum().item(), rel=1e-5)


def test_dam_target_loss_and_coverage():
    dam = torch.tensor([[0.1, 0.5, 0.3, 0.0, 0.9], [0.4, 0.2, 0.8, 0.7, 0.6]])
    mask = torch.tensor([[False] * 5, [False, False, False, True, True]])
    target = dam_target(dam, mask, torch.tensor([2, 1]), 3)
    assert target.tolist() == [[0, 1, 0, 0, 1], [0, 0, 1, 0, 0]]
    scores = torch.randn(2, 5)
    loss = dam_loss(scores, target, mask)
    manual = torch.stack([F.binary_cross_entropy_with_logits(scores[0], target[0]),
                          F.binary_cross_entropy_with_logits(scores[1, :3], target[1, :3])]).mean()
    assert loss.item() == pytest.approx(manual.item(), rel=1e-6)
    no_pad = torch.zeros_like(mask)
    assert dam_loss(scores, target, no_pad).item() == pytest.approx(
        F.multilabel_soft_margin_loss(scores, target).item(), rel=1e-6)
    idx = torch.tensor([[4, 1, 0], [2, 0, 1]])
    corr = token_coverage(dam, idx, torch.tensor([2, 1]))
    assert corr.item() == pytest.approx(((0.9 + 0.5) / 1.8 + 0.8 / 2.7) / 2, rel=1e-6)
