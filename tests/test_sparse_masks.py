"""SparseResNet masks: Gumbel sampling, temperature schedule, grid prior, forced density, and the
GEMM form of the mask convs."""
import pytest
import torch
from torch import nn

from fad.config import get_cfg_defaults
from fad.modeling.backbone import build_backbone_body
from fad.modeling.backbone.sparse.masks import MaskSampler, forced_density, small_conv3x3


def _sampler(**kwargs) -> MaskSampler:
    kwargs.setdefault("grid_interval", 0)
    return MaskSampler(**kwargs)


def test_low_temperature_sampling_is_bernoulli_p():
    torch.manual_seed(0)
    probs = torch.tensor([0.1, 0.35, 0.5, 0.8, 0.95])
    logits = torch.logit(probs).view(5, 1, 1, 1).expand(5, 1, 200, 200).contiguous()
    sampler = _sampler(sampling="stochastic").eval()
    m = sampler(logits)
    share = (m > 0).float().mean(dim=(1, 2, 3))
    sigma = torch.sqrt(probs * (1 - probs) / 40000)
    assert torch.all((share - probs).abs() < 4 * sigma), (share, probs)
    # kept values are the T = 0.03 relaxed samples: all >= 0.5, most of them near 1
    kept = m[m > 0]
    assert kept.min() >= 0.5 and kept.max() <= 1.0
    assert (kept > 0.99).float().mean() > 0.8


def test_deterministic_sampling_thresholds_p():
    logits = torch.randn(2, 1, 9, 13)
    m = _sampler(sampling="deterministic").eval()(logits)
    assert torch.equal(m, (torch.sigmoid(logits) >= 0.5).float())


def test_training_mask_is_soft_and_temperature_decays():
    torch.manual_seed(0)
    sampler = _sampler(temperature_init=1.0, temperature_decay=0.99998).train()
    logits = torch.zeros(1, 1, 50, 50, requires_grad=True)
    for _ in range(3):
        m = sampler(logits)
    assert 0 < m.min() and m.max() < 1 and 0.1 < m.std() < 0.4  # relaxed, T still ~1
    assert sampler.temperature.item() == pytest.approx(0.99998 ** 3, rel=1e-6)
    m.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # the temperature is a buffer: it is checkpointed with the model
    assert "temperature" in sampler.state_dict()


@pytest.mark.parametrize("mode", ["train", "stochastic", "deterministic"])
def test_grid_positions_always_sampled(mode):
    sampler = MaskSampler(grid_interval=11, sampling="deterministic" if mode != "stochastic"
                          else "stochastic")
    sampler.train(mode == "train")
    logits = torch.full((2, 1, 30, 40), -20.0)  # p ~ 2e-9: nothing else is sampled
    m = sampler(logits)
    grid = torch.zeros_like(m, dtype=torch.bool)
    grid[..., ::11, ::11] = True
    assert torch.all(m[grid] == 1.0)
    assert m[~grid].max() < 1e-3


def test_forced_density_is_seeded_and_restored():
    model = nn.ModuleList([MaskSampler(unit_id=0), MaskSampler(unit_id=1)]).eval()
    logits = torch.zeros(1, 1, 100, 100)
    with forced_density(model, 0.3, seed=5):
        a0, a1 = model[0](logits), model[1](logits)
        b0 = model[0](logits)
    assert torch.equal(a0, b0)  # same masks on every forward (both execution paths)
    assert not torch.equal(a0, a1)  # different masks per unit
    assert abs(a0.mean().item() - 0.3) < 0.02
    assert set(a0.unique().tolist()) <= {0.0, 1.0}
    assert model[0].forced is None
    with pytest.raises(ValueError, match="density"):
        with forced_density(model, 1.5):
            pass


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("size", [(17, 23), (16, 16), (1, 5)])
def test_small_conv3x3_matches_conv2d(monkeypatch, backend, size):
    monkeypatch.setenv("FAD_SPARSE_BACKEND", backend)
    torch.manual_seed(0)
    convs = [nn.Conv2d(24, 1, 3, 1, 1), nn.Conv2d(24, 1, 3, 2, 1), nn.Conv2d(24, 18, 3, 2, 1)]
    x = torch.randn(2, 24, *size).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():  # inference: the compiled tap sums when available
        results = small_conv3x3(x, convs)
        for got, conv in zip(results, convs):
            want = conv(x)
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for got, conv in zip(small_conv3x3(x, convs), convs):  # autograd path
        torch.testing.assert_close(got, conv(x), atol=1e-5, rtol=1e-5)


def test_small_conv3x3_gradients_match():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 2, 3, 2, 1)
    x = torch.randn(1, 8, 11, 9, requires_grad=True)
    small_conv3x3(x, [conv])[0].square().sum().backward()
    g_small = (x.grad.clone(), conv.weight.grad.clone())
    x.grad, conv.weight.grad = None, None
    conv(x).square().sum().backward()
    torch.testing.assert_close(g_small[0], x.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_small[1], conv.weight.grad, atol=1e-5, rtol=1e-5)


def test_bad_sampling_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="sampling must be one of stochastic, deterministic"):
        MaskSampler(sampling="greedy")


@pytest.mark.parametrize("bias, probability", [(3.0, 0.9526), (0.0, 0.5), (-1.0, 0.2689)])
def test_mask_init_bias_sets_the_initial_sampling_probability(bias, probability):
    """MODEL.SPARSE.MASK_INIT_BIAS b: a fresh SparseResNet computes each position with
    probability sigmoid(b) (by hand: 1 / (1 + e^-3) = 0.9526, 1 / (1 + e) = 0.2689)."""
    cfg = get_cfg_defaults()
    cfg.merge_from_list(["MODEL.BACKBONE.NAME", "sparse_resnet", "MODEL.BACKBONE.DEPTH", 18,
                         "MODEL.SPARSE.MASK_INIT_BIAS", bias, "MODEL.SPARSE.GRID_INTERVAL", 0])
    torch.manual_seed(0)
    body, _ = build_backbone_body(cfg)
    with torch.no_grad():
        body.eval()(torch.randn(4, 3, 192, 192))
    stats = body.log_stats()
    assert stats["density_conv1"] == pytest.approx(probability, abs=0.03)
    assert stats["density_conv2"] == pytest.approx(probability, abs=0.03)
