"""Reconstruct unsampled positions with a learnable Gaussian kernel (SparseResNet).

out = m * f + (1 - m) * conv(f * m, K) / (conv(m, K) + eps), with the depthwise kernel
K(d) = (s^2 / 2 pi) * exp(-s^2 d^2 / 2) over a k x k window (d = distance from the centre), the
same for every channel, and one learnable scalar s per site. K factorises into two 1-D taps
t(d) = (|s| / sqrt(2 pi)) * exp(-s^2 d^2 / 2), so K(dy, dx) = t(dy) * t(dx).

Two implementations of the same function:
- `interpolate_dense`: separable depthwise convolutions (differentiable; training and CUDA);
- `interpolate_rows`: features given only at sampled positions as compact rows plus an index,
  with an optional fused bias + residual + ReLU epilogue (sparse execution). On the CPU it runs
  the compiled kernel (`kernel.py`), which visits only sampled neighbours; elsewhere it scatters
  the rows and calls `interpolate_dense`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .kernel import kernel_runs

EPS = 1e-5


def gaussian_taps(scale: Tensor, kernel_size: int) -> Tensor:
    """1-D factor [k] of the k x k Gaussian kernel with learnable scale s (a 0-d tensor)."""
    r = kernel_size // 2
    d = torch.arange(-r, r + 1, device=scale.device, dtype=scale.dtype)
    return scale.abs() / math.sqrt(2 * math.pi) * torch.exp(-0.5 * scale * scale * d * d)


def _separable(x: Tensor, taps: Tensor) -> Tensor:
    """Depthwise conv of x [N, C, H, W] with the kernel taps (x) taps (zero padding)."""
    c, k = x.shape[1], taps.numel()
    r = k // 2
    col = taps.view(1, 1, k, 1).expand(c, 1, k, 1)
    row = taps.view(1, 1, 1, k).expand(c, 1, 1, k)
    x = F.conv2d(x, col, padding=(r, 0), groups=c)
    return F.conv2d(x, row, padding=(0, r), groups=c)


def interpolate_dense(f: Tensor, m: Tensor, taps: Tensor, eps: float = EPS) -> Tensor:
    """f [N, C, H, W], m [N, 1, H, W] in [0, 1], taps [k] -> [N, C, H, W] (the formula above)."""
    num = _separable(f * m, taps)
    den = _separable(m, taps) + eps
    return m * f + (1 - m) * num / den


def interpolate_rows(rows: Tensor, index: Tensor, mask: Tensor, taps: Tensor,
                     size: tuple[int, int, int], bias: Tensor | None = None,
                     residual: Tensor | None = None, relu: bool = False,
                     relu_rows: bool = False, into_residual: bool = False,
                     eps: float = EPS) -> Tensor:
    """Interpolate features known only at sampled positions, then add bias/residual, ReLU.

    Args:
        rows: [P, C] features of the sampled positions.
        index: [N*H*W] int64 row of each position in `rows` (any value in [0, P) where the
            mask is 0).
        mask: [N*H*W] mask values m >= 0 (0 = not sampled).
        taps: [k] 1-D Gaussian factor (`gaussian_taps`).
        size: (N, H, W) of the position grid (row-major, positions are n*H*W + y*W + x).
        bias: optional [C] added after interpolation.
        residual: optional [N*H*W, C] added after the bias.
        relu: apply ReLU last.
        relu_rows: use ReLU(rows) as the features (fuses the producer's ReLU).
        into_residual: write the result onto `residual` (contiguous; no new memory) and return
            it; not with relu_rows.

    Returns:
        [N*H*W, C]: row p is the interpolated feature of position p.
    """
    n, h, w = size
    if into_residual:
        if residual is None or relu_rows or not residual.is_contiguous():
            raise ValueError("into_residual needs a contiguous residual and relu_rows False")
        if kernel_runs(rows):
            torch.ops.fad_sparse.interpolate_into(
                residual, rows.contiguous(), index.contiguous(), mask.contiguous(),
                taps.detach().float().contiguous(), eps,
                None if bias is None else bias.contiguous(), relu, n, h, w)
            return residual
        return residual.copy_(interpolate_rows(rows, index, mask, taps, size, bias, residual,
                                               relu, eps=eps))
    if kernel_runs(rows):
        return torch.ops.fad_sparse.interpolate(
            rows.contiguous(), index.contiguous(), mask.contiguous(),
            taps.detach().float().contiguous(), eps,
            None if bias is None else bias.contiguous(),
            None if residual is None else residual.contiguous(), relu, relu_rows, n, h, w)
    c = rows.shape[1]
    if relu_rows:
        rows = rows.relu()
    sampled = mask != 0
    dense = rows.new_zeros(n * h * w, c)
    dense[sampled] = rows[index[sampled]]
    f = dense.view(n, h, w, c).permute(0, 3, 1, 2)
    m = mask.to(rows.dtype).view(n, 1, h, w)
    out = interpolate_dense(f, m, taps.to(rows.dtype), eps).permute(0, 2, 3, 1).reshape(-1, c)
    if bias is not None:
        out = out + bias
    if residual is not None:
        out = out + residual
    return out.relu() if relu else out


class GaussianInterpolation(nn.Module):
    """One interpolation site: learnable scale s (init `init_scale`) over a k x k window."""

    def __init__(self, kernel_size: int = 7, init_scale: float = 3.0):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"MODEL.SPARSE.INTERP_KERNEL must be odd and >= 1, got {kernel_size}")
        self.kernel_size = kernel_size
        self.scale = nn.Parameter(torch.tensor(float(init_scale)))

    def taps(self) -> Tensor:
        """[k] 1-D factor of the current kernel."""
        return gaussian_taps(self.scale, self.kernel_size)

    def forward(self, f: Tensor, m: Tensor) -> Tensor:
        """f [N, C, H, W], m [N, 1, H, W] -> interpolated [N, C, H, W] (channels-last when the
        compiled kernel runs: inference without autograd on the CPU)."""
        needs_grad = torch.is_grad_enabled() and (f.requires_grad or self.scale.requires_grad)
        if needs_grad or not kernel_runs(f):
            return interpolate_dense(f, m, self.taps())
        n, c, h, w = f.shape
        rows = f.permute(0, 2, 3, 1).reshape(-1, c)
        index = torch.arange(n * h * w, device=f.device)
        out = interpolate_rows(rows, index, m.reshape(-1).to(f.dtype), self.taps(), (n, h, w))
        return out.view(n, h, w, c).permute(0, 3, 1, 2)
