"""Reconstruct unsampled positions with a learnable Gaussian kernel (SparseResNet).

out = m * f + (1 - m) * conv(f * m, K) / (conv(m, K) + eps), with the depthwise kernel
K(d) = (s^2 / 2 pi) * exp(-s^2 d^2 / 2) over a k x k window (d = distance from the centre), the
same for every channel, and one learnable scalar s per site. K factorises into two 1-D taps
t(d) = (|s| / sqrt(2 pi)) * exp(-s^2 d^2 / 2), so K(dy, dx) = t(dy) * t(dx).

Two implementations of the same function, both in the op `fad.ops.sparse`:
- `interpolate_dense`: separable depthwise convolutions (differentiable; training and CUDA);
- `interpolate_rows`: features given only at sampled positions as compact rows plus an index,
  with an optional fused bias + residual + ReLU epilogue (sparse execution). On the CPU it runs
  the compiled kernel, which visits only sampled neighbours; elsewhere it scatters the rows and
  calls `interpolate_dense`.
This module holds the model side: the learnable taps and the `GaussianInterpolation` site.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fad.ops.sparse import interpolate_dense, interpolate_rows, kernel_runs


def gaussian_taps(scale: Tensor, kernel_size: int) -> Tensor:
    """1-D factor [k] of the k x k Gaussian kernel with learnable scale s (a 0-d tensor)."""
    r = kernel_size // 2
    d = torch.arange(-r, r + 1, device=scale.device, dtype=scale.dtype)
    return scale.abs() / math.sqrt(2 * math.pi) * torch.exp(-0.5 * scale * scale * d * d)


class GaussianInterpolation(nn.Module):
    """One interpolation site: learnable scale s (init `init_scale`) over a k x k window."""

    def __init__(self, kernel_size: int = 7, init_scale: float = 3.0):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"GaussianInterpolation: kernel_size must be odd and >= 1, got "
                             f"{kernel_size}")
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
