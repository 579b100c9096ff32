"""Sparse execution of SparseResNet equals the masked dense path; block facts from the spec."""
import contextlib

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops import FrozenBatchNorm2d, deform_conv2d

from fad.modeling.backbone import sparse_resnet
from fad.modeling.backbone.sparse import execution
from fad.modeling.backbone.sparse.execution import (
    Active,
    conv_at,
    deform_windows,
    gather_windows,
    runs_dense,
)
from fad.modeling.backbone.sparse.interpolation import gaussian_taps
from fad.modeling.backbone.sparse.masks import forced_density
from fad.modeling.backbone.sparse_resnet import (
    SparseBasicBlock,
    SparseBottleneck,
    SparseOptions,
    SparseResNetBody,
)

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
    block = _block(name, inplanes, planes, stride, dcn, sampling)
    x = torch.randn(2, inplanes, 21, 26).relu().contiguous(memory_format=torch.channels_last)
    dense = _run(block, x, "dense_masked")
    sparse = _run(block, x, "sparse")
    d1, d2 = block.density.tolist()
    assert 0.05 < d1 < 0.95 and 0.05 < d2 < 0.95  # a mix of computed and skipped positions
    assert sparse.shape == dense.shape
    torch.testing.assert_close(sparse, dense, atol=2e-5, rtol=1e-4)


def _block(name: str, inplanes: int, planes: int, stride: int, dcn: bool,
           sampling: str = "stochastic") -> nn.Module:
    cls = SparseBottleneck if name.startswith("bottleneck") else SparseBasicBlock
    out_ch = planes * cls.expansion
    downsample = None
    if stride != 1 or inplanes != out_ch:
        downsample = nn.Sequential(nn.Conv2d(inplanes, out_ch, 1, stride, bias=False),
                                   FrozenBatchNorm2d(out_ch))
    block = cls(inplanes, planes, stride, downsample, FrozenBatchNorm2d,
                SparseOptions(sampling=sampling), unit_id=3, dcn=dcn)
    _randomise(block)
    return block.eval()


def _assert_equal_to_masked_dense(block: nn.Module, x: torch.Tensor) -> None:
    """Sparse == masked dense within 1e-5 of the output's largest magnitude; x not modified."""
    x_before = x.clone()
    dense = _run(block, x, "dense_masked")
    sparse = _run(block, x, "sparse")
    assert torch.equal(x, x_before)
    assert sparse.shape == dense.shape
    assert (sparse - dense).abs().max() <= 1e-5 * dense.abs().max().clamp_min(1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("density", [0.0, 0.05, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("name, inplanes, planes, stride, dcn", BLOCKS)
def test_block_sparse_equals_masked_dense_at_forced_density(monkeypatch, threads, backend,
                                                            density, name, inplanes, planes,
                                                            stride, dcn):
    """Every block kind at densities 0 .. 1 (1 runs the dense fallback), 1 and 2 threads; the
    map is large enough that the kernels split their work over both threads."""
    monkeypatch.setenv("FAD_SPARSE_BACKEND", backend)
    torch.manual_seed(0)
    block = _block(name, inplanes, planes, stride, dcn)
    x = torch.randn(2, inplanes, 30, 36).relu().contiguous(memory_format=torch.channels_last)
    with forced_density(block, density, seed=4):
        _assert_equal_to_masked_dense(block, x)
    if 0 < density < 1:
        assert all(abs(d - density) < 0.05 for d in block.density.tolist())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sampling", ["stochastic", "deterministic"])
@pytest.mark.parametrize("name, inplanes, planes, stride", [("bottleneck-stride2", 64, 32, 2),
                                                            ("basic-stride2", 32, 64, 2)])
def test_sparse_records_the_masks_densities(monkeypatch, backend, sampling, name, inplanes,
                                            planes, stride):
    """Sparse execution records each block's densities from its own count of the sampled
    positions: equal to the share of nonzero mask values, as the masked dense path records."""
    monkeypatch.setenv("FAD_SPARSE_BACKEND", backend)
    torch.manual_seed(0)
    block = _block(name, inplanes, planes, stride, False, sampling)
    x = torch.randn(2, inplanes, 21, 26).relu().contiguous(memory_format=torch.channels_last)
    _run(block, x, "dense_masked")
    dense = block.density.clone()
    torch.manual_seed(1)  # `_run`'s seed: the same stochastic masks
    m1, m2 = block.masks(x)
    shares = [(m != 0).sum().item() / m.numel() for m in (m1, m2)]
    _run(block, x, "sparse")
    assert block.density.tolist() == pytest.approx(shares, abs=1e-7)
    assert block.density.tolist() == pytest.approx(dense.tolist(), abs=1e-7)
    assert 0.05 < shares[0] < 0.95 and shares[0] != shares[1]


@pytest.mark.parametrize("name, inplanes, planes, stride, dcn",
                         [b for b in BLOCKS if not b[-1]])
def test_dense_fallback_decision(monkeypatch, name, inplanes, planes, stride, dcn):
    """Above `DENSE_ABOVE` a conv runs densely (no gathered conv), below it sparsely; both equal
    the masked dense path."""
    torch.manual_seed(0)
    block = _block(name, inplanes, planes, stride, dcn)
    x = torch.randn(1, inplanes, 24, 20).relu().contiguous(memory_format=torch.channels_last)
    calls = []

    def counting_conv_at(*args, **kwargs):
        calls.append(args[1].positions.numel())
        return conv_at(*args, **kwargs)

    assert runs_dense("conv2", Active.of(torch.ones(1, 1, 4, 4)))
    assert not runs_dense("conv2", Active.of(torch.zeros(1, 1, 4, 4)))
    monkeypatch.setattr(execution, "conv_at", counting_conv_at)
    with forced_density(block, 0.5, seed=1):
        for limit, sparse_convs in ((0.6, 2), (0.4, 0), (0.0, 0), (1.0, 2)):
            monkeypatch.setitem(execution.DENSE_ABOVE, "conv1", limit)
            monkeypatch.setitem(execution.DENSE_ABOVE, "conv2", limit)
            calls.clear()
            _assert_equal_to_masked_dense(block, x)
            assert len(calls) == sparse_convs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size, stride, second", [(1, 1, False), (1, 2, True), (3, 1, True),
                                                  (3, 2, False)])
def test_conv_at_matches_conv2d(monkeypatch, threads, backend, size, stride, second):
    monkeypatch.setenv("FAD_SPARSE_BACKEND", backend)
    torch.manual_seed(0)
    n, c, h, w, c1, c2 = 2, 8, 23, 29, 12, 5
    x = torch.randn(n, c, h, w)
    weight, bias = torch.randn(c1, c, size, size), torch.randn(c1)
    weight2 = torch.randn(c1, c2)
    want = torch.nn.functional.conv2d(x, weight, bias, stride, size // 2).relu()
    want = want.permute(0, 2, 3, 1).reshape(-1, c1)
    if second:
        want = want @ weight2
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    out = Active.of((torch.rand(n, 1, ho, wo) < 0.6).float())
    got = conv_at(x.permute(0, 2, 3, 1).reshape(-1, c), out, h, w, size, stride,
                  weight.permute(2, 3, 1, 0).reshape(-1, c1).contiguous(), bias, relu=True,
                  weight2=weight2 if second else None)
    torch.testing.assert_close(got, want[out.positions], atol=1e-4, rtol=1e-4)


def test_conv_at_flop_count_is_the_same_on_both_backends(monkeypatch):
    torch.manual_seed(0)
    rows, out = torch.randn(2 * 9 * 11, 6), Active.of((torch.rand(2, 1, 9, 11) < 0.5).float())
    weight, weight2 = torch.randn(54, 4), torch.randn(4, 3)
    counts = []
    for backend in BACKENDS:
        monkeypatch.setenv("FAD_SPARSE_BACKEND", backend)
        with FlopCounterMode(display=False) as counter:
            conv_at(rows, out, 9, 11, 3, 1, weight, torch.randn(4), relu=True, weight2=weight2)
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] == 2 * out.positions.numel() * (54 * 4 + 4 * 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_interpolate_into_residual(monkeypatch, backend):
    monkeypatch.setenv("FAD_SPARSE_BACKEND", backend)
    torch.manual_seed(0)
    n, h, w, c = 1, 9, 13, 6
    active = Active.of((torch.rand(n, 1, h, w) < 0.4).float())
    rows, bias = torch.randn(active.positions.numel(), c), torch.randn(c)
    residual = torch.randn(n * h * w, c)
    taps = gaussian_taps(torch.tensor(1.5), 7)
    want = active.interpolate(rows, taps, bias=bias, residual=residual, relu=True)
    got = active.interpolate(rows, taps, bias=bias, residual=residual, relu=True,
                             into_residual=True)
    assert got.data_ptr() == residual.data_ptr()
    torch.testing.assert_close(got, want)


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


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("depth", [18, 50])
def test_body_blocks_take_their_mask_taps_from_the_previous_block(monkeypatch, backend, depth):
    """Blocks get their mask-conv tap rows from the previous block's last interpolation
    (`MaskLink`, when it writes onto the shortcut); with masks sampled from the logits
    (deterministic p >= 0.5), the body stays equal to the masked dense path and to sparse
    execution without the links."""
    monkeypatch.setenv("FAD_SPARSE_BACKEND", backend)
    torch.manual_seed(0)
    body = SparseResNetBody(depth, FrozenBatchNorm2d, SparseOptions(sampling="deterministic"))
    _randomise(body)
    body.eval()
    x = torch.randn(1, 3, 64, 96)
    taken = []
    take = execution.MaskLink.take
    monkeypatch.setattr(execution.MaskLink, "take",
                        lambda link, t: taken.append(take(link, t)) or taken[-1])
    with torch.no_grad():
        body.execution = "dense_masked"
        dense = body(x)
        body.execution = "sparse"
        sparse = body(x)
        sparse_densities = body._density_tensor()
        # R-18's first block writes a new map (it has no downsample and may not overwrite the
        # stem's output), so it hands no rows on; every other block does
        assert len(taken) == len(body.blocks) - 1
        assert [t is None for t in taken] == [depth == 18] + [False] * (len(taken) - 1)
        monkeypatch.setattr(sparse_resnet, "linked", lambda blocks: contextlib.nullcontext())
        unlinked = body(x)
        assert len(taken) == len(body.blocks) - 1  # no links this time
    assert all(b.link_in is None and b.link_out is None for b in body.blocks)
    densities = sparse_densities.flatten()
    mixed = (densities > 0.05) & (densities < 0.95)  # masks with computed and skipped positions
    assert mixed.float().mean() >= 0.5
    for k in ("c2", "c3", "c4", "c5"):
        scale = dense[k].abs().max()
        assert (sparse[k] - dense[k]).abs().max() <= 1e-4 * scale
        assert (sparse[k] - unlinked[k]).abs().max() <= 1e-5 * scale


def test_sparse_stem_equals_the_dense_stem():
    torch.manual_seed(0)
    body = SparseResNetBody(18, FrozenBatchNorm2d, SparseOptions())
    _randomise(body)
    body.eval()
    x = torch.randn(2, 3, 37, 50).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want = body.maxpool(body.relu(body.bn1(body.conv1(x))))
        got = execution.sparse_stem(body, x)
    assert (want < 0.0).sum() == 0 and (want == 0.0).sum() > 0  # the ReLU cut some positions
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_mask_link_hands_rows_only_for_the_unchanged_map():
    link = execution.MaskLink(torch.randn(4, 18))
    out, rows = torch.randn(1, 4, 2, 3), torch.randn(6, 18)
    link.hand(out, rows)
    assert link.take(out) is rows
    assert link.take(out) is None  # taken once
    link.hand(out, rows)
    assert link.take(out.clone()) is None  # another tensor
    link.hand(out, rows)
    out.add_(1.0)
    assert link.take(out) is None  # changed since


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
    with pytest.raises(ValueError, match="execution must be one of dense_masked, sparse, got"):
        SparseResNetBody(18).execution = "fast"
