"""Sparse execution of SparseResNet equals the masked dense path; block facts from the spec."""
import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d, deform_conv2d

from fad.modeling.backbone.sparse.execution import Active, deform_windows, gather_windows
from fad.modeling.backbone.sparse.masks import forced_density
from fad.modeling.backbone.sparse_resnet import (SparseBasicBlock, SparseBottleneck,
                                                 SparseOptions, SparseResNetBody)

BACKENDS = ["auto", "reference"]


def _randomise(module: nn.Module, mask_bias: float = 0.0) -> None:
    """Non-trivial BN statistics, mask convs around p = 0.5, small DCN offsets, varied scales."""
    for m in module.modules():
        if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    for name, m in module.named_modules():
        if name.endswith(("conv1_mask", "conv2_mask")):
            nn.init.normal_(m.weight, std=0.05)
            nn.init.constant_(m.bias, mask_bias)
        elif name.endswith("conv2_offset"):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.normal_(m.bias, std=0.5)
        elif name.endswith("interp1"):
            m.scale.data.fill_(0.8)
        elif name.endswith("interp2"):
            m.scale.data.fill_(2.0)


def _run(block: nn.Module, x: torch.Tensor, execution: str, seed: int = 1) -> torch.Tensor:
    block.execution = execution
    torch.manual_seed(seed)  # stochastic sampling draws the same noise in both paths
    with torch.no_grad():
        return block(x)


BLOCKS = [
    ("bottleneck", 64, 16, 1, False),
    ("bottleneck-stride2", 64, 32, 2, False),
    ("bottleneck-dcn-stride2", 64, 32, 2, True),
    ("basic", 32, 32, 1, False),
    ("basic-stride2", 32, 64, 2, False),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sampling", ["stochastic", "deterministic"])
@pytest.mark.parametrize("name, inplanes, planes, stride, dcn", BLOCKS)
def test_block_sparse_equals_masked_dense(monkeypatch, backend, sampling, name, inplanes,
                                          planes, stride, dcn):
    monkeypatch.setenv("FAD_SPARSE_BACKEND", backend)
    torch.manual_seed(0)
    cls = SparseBottleneck if name.startswith("bottleneck") else SparseBasicBlock
    out_ch = planes * cls.expansion
    downsample = None
    if stride != 1 or inplanes != out_ch:
        downsample = nn.Sequential(nn.Conv2d(inplanes, out_ch, 1, stride, bias=False),
                                   FrozenBatchNorm2d(out_ch))
    block = cls(inplanes, planes, stride, downsample, FrozenBatchNorm2d,
                SparseOptions(sampling=sampling), unit_id=3, dcn=dcn)
    _randomise(block)
    block.eval()
    x = torch.randn(2, inplanes, 21, 26).relu().contiguous(memory_format=torch.channels_last)
    dense = _run(block, x, "dense_masked")
    sparse = _run(block, x, "sparse")
    d1, d2 = block.density.tolist()
    assert 0.05 < d1 < 0.95 and 0.05 < d2 < 0.95  # a mix of computed and skipped positions
    assert sparse.shape == dense.shape
    torch.testing.assert_close(sparse, dense, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("size", [(33, 47), (32, 32)])
def test_mask_shapes_match_conv_outputs_in_stride2_blocks(size):
    down = nn.Sequential(nn.Conv2d(16, 64, 1, 2, bias=False), nn.BatchNorm2d(64))
    block = SparseBottleneck(16, 16, 2, down, nn.BatchNorm2d).eval()
    x = torch.randn(1, 16, *size)
    m1, m2 = block.masks(x)
    assert m1.shape[-2:] == block.conv1(x).shape[-2:]
    h1 = block.conv1(x)
    assert m2.shape[-2:] == block.conv2(h1).shape[-2:]
    basic = SparseBasicBlock(16, 32, 2, nn.Sequential(nn.Conv2d(16, 32, 1, 2, bias=False),
                                                      nn.BatchNorm2d(32))).eval()
    b1, b2 = basic.masks(x)
    assert b1.shape[-2:] == basic.conv1(x).shape[-2:] == b2.shape[-2:]


@pytest.mark.parametrize("backend", BACKENDS)
def test_gather_windows_matches_unfold(monkeypatch, backend):
    monkeypatch.setenv("FAD_SPARSE_BACKEND", backend)
    torch.manual_seed(0)
    n, c, h, w, stride = 2, 5, 9, 11, 2
    x = torch.randn(n, c, h, w)
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    m = (torch.rand(n, 1, ho, wo) < 0.5).float()
    out = Active.of(m)
    cols = gather_windows(x.permute(0, 2, 3, 1).reshape(-1, c), out, h, w, stride)
    unf = torch.nn.functional.unfold(x, 3, padding=1, stride=stride)  # [N, C*9, L]
    unf = unf.view(n, c, 9, ho * wo).permute(0, 3, 2, 1).reshape(n * ho * wo, 9 * c)
    torch.testing.assert_close(cols, unf[out.positions])


def test_deform_windows_match_torchvision():
    torch.manual_seed(0)
    n, c, h, w, stride = 1, 6, 10, 12, 2
    x = torch.randn(n, c, h, w)
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    offsets = torch.randn(n, 18, ho, wo) * 1.5
    weight = torch.randn(4, c, 3, 3)
    want = deform_conv2d(x, offsets, weight, stride=stride, padding=1)
    m = torch.ones(n, 1, ho, wo)
    out = Active.of(m)
    cols = deform_windows(x.permute(0, 2, 3, 1).reshape(-1, c), out,
                          offsets.permute(0, 2, 3, 1).reshape(-1, 18), h, w, stride)
    got = cols @ weight.permute(0, 2, 3, 1).reshape(4, -1).t()
    torch.testing.assert_close(got, want.permute(0, 2, 3, 1).reshape(-1, 4), atol=1e-4,
                               rtol=1e-4)


@pytest.mark.parametrize("depth", [18, 50])
def test_body_sparse_equals_dense_at_forced_density(depth):
    torch.manual_seed(0)
    body = SparseResNetBody(depth, FrozenBatchNorm2d, SparseOptions())
    _randomise(body)
    body.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad(), forced_density(body, 0.3, seed=2):
        body.execution = "dense_masked"
        dense = body(x)
        body.execution = "sparse"
        sparse = body(x)
    stats = body.log_stats()
    for k in ("c2", "c3", "c4", "c5"):
        assert sparse[k].shape == dense[k].shape
        scale = dense[k].abs().max()
        assert (sparse[k] - dense[k]).abs().max() <= 1e-4 * scale
    assert abs(stats["density_conv1"] - 0.3) < 0.05 and abs(stats["density_conv2"] - 0.3) < 0.05
    assert stats["backbone_gmacs"] > 0


def test_sparse_loss_at_init_and_gradients():
    torch.manual_seed(0)
    body = SparseResNetBody(18, nn.BatchNorm2d, SparseOptions(), loss_weight=0.1).train()
    body.execution = "sparse"  # training always runs the differentiable dense path
    feats = body(torch.randn(2, 3, 64, 64))
    loss = body.aux_losses()["loss_sparse"]
    assert loss.item() == pytest.approx(0.1 * 0.9526, abs=1e-4)
    (loss + sum(f.mean() for f in feats.values())).backward()
    block = body.layer2[0]
    assert block.conv1_mask.bias.grad is not None and block.conv1_mask.bias.grad.abs() > 0
    assert block.interp2.scale.grad is not None
    stats = body.log_stats()
    # relaxed samples sigmoid(3 + logistic noise) at T = 1 average ~0.89
    assert 0.8 < stats["density_conv1"] < 0.95
    body.eval()
    assert body.aux_losses() == {}
    assert SparseResNetBody(18, loss_weight=0.0).train().aux_losses() == {}


def test_unknown_execution_mode():
    with pytest.raises(ValueError, match="MODEL.SPARSE.EXECUTION"):
        SparseResNetBody(18).execution = "fast"
