"""Gaussian interpolation of SparseResNet: the spec formula, its identities, and the compiled
kernel against the PyTorch reference."""
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from fad.modeling.backbone.sparse.interpolation import (
    GaussianInterpolation,
    gaussian_taps,
    interpolate_dense,
    interpolate_rows,
)
from fad.ops.sparse import kernel_available


def _spec_kernel(s: float, k: int = 7) -> torch.Tensor:
    r = k // 2
    d = torch.arange(-r, r + 1, dtype=torch.float64)
    dist2 = d.view(-1, 1) ** 2 + d.view(1, -1) ** 2
    return (s * s / (2 * math.pi)) * torch.exp(-s * s * dist2 / 2)


def _spec_interpolation(f, m, s, eps=1e-5):
    """out = m f + (1 - m) conv(f m, K) / (conv(m, K) + eps), with the full 7x7 K (float64)."""
    c = f.shape[1]
    k = _spec_kernel(s).view(1, 1, 7, 7)
    num = F.conv2d(f * m, k.expand(c, 1, 7, 7), padding=3, groups=c)
    den = F.conv2d(m, k, padding=3) + eps
    return m * f + (1 - m) * num / den


def test_taps_factorise_the_spec_kernel():
    taps = gaussian_taps(torch.tensor(1.7, dtype=torch.float64), 7)
    torch.testing.assert_close(taps.view(-1, 1) * taps.view(1, -1), _spec_kernel(1.7))


@pytest.mark.parametrize("s", [3.0, 0.6])
def test_dense_interpolation_matches_spec_formula(s):
    torch.manual_seed(0)
    f = torch.randn(2, 5, 19, 23, dtype=torch.float64)
    m = torch.rand(2, 1, 19, 23, dtype=torch.float64)
    m = m * (m > 0.6)
    got = interpolate_dense(f, m, gaussian_taps(torch.tensor(s, dtype=torch.float64), 7))
    torch.testing.assert_close(got, _spec_interpolation(f, m, s))


def test_all_ones_mask_is_identity():
    f = torch.randn(1, 4, 10, 12)
    m = torch.ones(1, 1, 10, 12)
    interp = GaussianInterpolation()
    torch.testing.assert_close(interpolate_dense(f, m, interp.taps()), f)
    with torch.no_grad():
        torch.testing.assert_close(interp(f, m), f)


def test_sampled_pixels_unchanged_and_isolated_pixels_near_zero():
    torch.manual_seed(0)
    f = torch.randn(1, 3, 30, 30) + 5.0
    m = torch.zeros(1, 1, 30, 30)
    m[..., 5:8, 5:8] = 1.0  # one sampled patch, far from the corner (25, 25)
    out = interpolate_dense(f, m, gaussian_taps(torch.tensor(3.0), 7))
    torch.testing.assert_close(out[..., 5:8, 5:8], f[..., 5:8, 5:8])
    assert out[..., 25, 25].abs().max() < 1e-6  # no sampled neighbour in its 7x7 window
    # a neighbour of the patch is a weighted average of sampled values (all ~5)
    assert 3.0 < out[0, 0, 4, 6] < 7.0


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("channels", [5, 64, 70])
def test_rows_interpolation_matches_dense(monkeypatch, backend, channels):
    monkeypatch.setenv("FAD_SPARSE_BACKEND", backend)
    torch.manual_seed(channels)
    n, h, w = 2, 13, 17
    u = torch.rand(n * h * w)
    mask = torch.where(u < 0.2, 1.0, torch.where(u < 0.35, 0.5 + u, torch.zeros_like(u)))
    positions = mask.nonzero().squeeze(1)
    index = torch.zeros(n * h * w, dtype=torch.long)
    index[positions] = torch.arange(positions.numel())
    dense = torch.randn(n * h * w, channels)
    rows = dense[positions]
    bias, residual = torch.randn(channels), torch.randn(n * h * w, channels)
    for s in (3.0, 0.8):
        taps = gaussian_taps(torch.tensor(s), 7)
        got = interpolate_rows(rows, index, mask, taps, (n, h, w), bias=bias,
                               residual=residual, relu=True, relu_rows=s < 1)
        f = dense.view(n, h, w, channels).permute(0, 3, 1, 2)
        f = f.relu() if s < 1 else f
        want = interpolate_dense(f, mask.view(n, 1, h, w), taps)
        want = (want.permute(0, 2, 3, 1).reshape(-1, channels) + bias + residual).relu()
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n, h, w, channels", [(2, 13, 17, 70), (1, 6, 1000, 70)])
def test_interpolate_into_projects_its_output_rows(monkeypatch, backend, threads, n, h, w,
                                                   channels):
    # (1, 6, 1000, 70): lines of 70000 floats, so the kernel projects one line per group
    monkeypatch.setenv("FAD_SPARSE_BACKEND", backend)
    torch.manual_seed(channels + w)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        u = torch.rand(n * h * w)
        mask = torch.where(u < 0.2, 1.0, torch.where(u < 0.3, 0.5 + u, torch.zeros_like(u)))
        positions = mask.nonzero().squeeze(1)
        index = torch.zeros(n * h * w, dtype=torch.long)
        index[positions] = torch.arange(positions.numel())
        rows, bias = torch.randn(positions.numel(), channels), torch.randn(channels)
        residual = torch.randn(n * h * w, channels)
        project = torch.randn(channels, 18)
        taps = gaussian_taps(torch.tensor(3.0), 7)
        want = interpolate_rows(rows, index, mask, taps, (n, h, w), bias=bias,
                                residual=residual, relu=True)
        projected = torch.full((n * h * w, 18), float("nan"))
        got = interpolate_rows(rows, index, mask, taps, (n, h, w), bias=bias,
                               residual=residual.clone(), relu=True, into_residual=True,
                               project=project, projected=projected)
    finally:
        torch.set_num_threads(previous)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(projected, want @ project, atol=1e-4, rtol=1e-4)


def test_projection_needs_its_output_and_the_residual():
    mask, index, taps = torch.ones(6), torch.arange(6), torch.ones(7)
    rows, project = torch.randn(6, 4), torch.randn(4, 18)
    with pytest.raises(ValueError, match="project needs projected and into_residual"):
        interpolate_rows(rows, index, mask, taps, (1, 2, 3), residual=torch.randn(6, 4),
                         into_residual=True, project=project)
    with pytest.raises(ValueError, match="project needs projected and into_residual"):
        interpolate_rows(rows, index, mask, taps, (1, 2, 3), project=project,
                         projected=torch.empty(6, 18))


def test_kernel_rejects_bad_rows(monkeypatch):
    if shutil.which("c++") is None:
        pytest.skip("no C++ compiler on PATH")
    monkeypatch.setenv("FAD_SPARSE_BACKEND", "auto")
    assert kernel_available("cpu")  # a failed build fails here, it does not skip
    mask = torch.ones(6)
    with pytest.raises(RuntimeError, match="fad_sparse.interpolate"):
        torch.ops.fad_sparse.interpolate(torch.randn(2, 3), torch.arange(6), mask,
                                         torch.ones(7), 1e-5, None, None, False, False, 1, 2, 3)


def test_learnable_scale_gets_gradient():
    interp = GaussianInterpolation(7, 3.0)
    f = torch.randn(1, 2, 9, 9, requires_grad=True)
    m = (torch.rand(1, 1, 9, 9) > 0.5).float()
    interp(f, m).sum().backward()
    assert interp.scale.grad is not None and interp.scale.grad.abs() > 0
    assert f.grad.abs().sum() > 0


def test_even_kernel_is_a_clear_error():
    with pytest.raises(ValueError, match="kernel_size must be odd and >= 1"):
        GaussianInterpolation(6)


def test_unknown_backend_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("FAD_SPARSE_BACKEND", "fastest")
    with pytest.raises(ValueError, match="FAD_SPARSE_BACKEND"):
        kernel_available("cpu")


def test_reference_backend_never_loads_the_kernel(monkeypatch):
    monkeypatch.setenv("FAD_SPARSE_BACKEND", "reference")
    assert not kernel_available("cpu")
    assert not kernel_available("cuda")
