"""Pure-PyTorch references of the SparseResNet kernels (any device and dtype, differentiable).

Feature maps are rows: [N, C, H, W] is the [N*H*W, C] matrix with row p = n*H*W + y*W + x; a
set of sampled ("active") positions is a 1-D int64 tensor of such p. The Gaussian
interpolation is out = m * f + (1 - m) * conv(f * m, K) / (conv(m, K) + eps) with the separable
depthwise kernel K = taps (x) taps, the same for every channel.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-5


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


def interpolate_rows_reference(rows: Tensor, index: Tensor, mask: Tensor, taps: Tensor,
                               size: tuple[int, int, int], bias: Tensor | None = None,
                               residual: Tensor | None = None, relu: bool = False,
                               relu_rows: bool = False, eps: float = EPS) -> Tensor:
    """`fad_sparse::interpolate`: scatter rows [P, C] to the grid (index [N*H*W], mask
    [N*H*W]), `interpolate_dense`, + bias [C], + residual [N*H*W, C], ReLU -> [N*H*W, C]."""
    n, h, w = size
    c = rows.shape[1]
    if relu_rows:
        rows = rows.relu()
    sampled = mask != 0
    dense = with_zero_row(rows)[torch.where(sampled, index, rows.shape[0])]  # unsampled: zeros
    f = dense.view(n, h, w, c).permute(0, 3, 1, 2)
    m = mask.to(rows.dtype).view(n, 1, h, w)
    out = interpolate_dense(f, m, taps.to(rows.dtype), eps).permute(0, 2, 3, 1).reshape(-1, c)
    if bias is not None:
        out = out + bias
    if residual is not None:
        out = out + residual
    return out.relu() if relu else out


def active_rows_reference(values: Tensor) -> tuple[Tensor, Tensor]:
    """`fad_sparse::active_rows`: mask values [M] -> (positions [P] with value != 0, row_of [M]:
    the row of each position among them, 0 where unused)."""
    positions = torch.nonzero(values, as_tuple=True)[0]  # host sync: the active positions
    row_of = torch.zeros(values.numel(), dtype=torch.long, device=values.device)
    row_of[positions] = torch.arange(positions.numel(), device=values.device)
    return positions, row_of


def with_zero_row(rows: Tensor) -> Tensor:
    """[M, C] -> [M + 1, C] with an all-zero last row (the target of padding taps)."""
    return torch.cat([rows, rows.new_zeros(1, rows.shape[1])])


def window_index(positions: Tensor, n: int, in_h: int, in_w: int, out_h: int, out_w: int,
                 stride: int, size: int = 3) -> Tensor:
    """[P, size^2] input positions read by a size x size conv (padding size // 2) at output
    `positions` of the [n, out_h, out_w] grid (padding taps: n * in_h * in_w)."""
    p = positions
    img, rem = p // (out_h * out_w), p % (out_h * out_w)
    offsets = torch.arange(size, device=p.device) - size // 2
    iy = (rem // out_w * stride)[:, None] + offsets  # [P, size]
    ix = (rem % out_w * stride)[:, None] + offsets
    valid = ((iy >= 0) & (iy < in_h))[:, :, None] & ((ix >= 0) & (ix < in_w))[:, None, :]
    src = (img * in_h * in_w)[:, None, None] + iy[:, :, None] * in_w + ix[:, None, :]
    return torch.where(valid, src, n * in_h * in_w).view(-1, size * size)


def gather_windows_reference(rows: Tensor, positions: Tensor, n: int, in_h: int, in_w: int,
                             out_h: int, out_w: int, stride: int) -> Tensor:
    """`fad_sparse::gather_windows`: im2col columns [P, 9 * C], ordered (ky, kx, c), of a 3x3
    pad-1 conv with `stride` at output `positions`, reading rows [n*in_h*in_w, C]."""
    index = window_index(positions, n, in_h, in_w, out_h, out_w, stride)
    return with_zero_row(rows).index_select(0, index.view(-1)).view(index.shape[0],
                                                                    9 * rows.shape[1])


def gather_conv_reference(rows: Tensor, positions: Tensor, n: int, in_h: int, in_w: int,
                          out_h: int, out_w: int, size: int, stride: int, weight: Tensor,
                          bias: Tensor | None = None, relu: bool = False,
                          weight2: Tensor | None = None) -> Tensor:
    """`fad_sparse::gather_conv`: a size x size conv (1 or 3, padding size // 2) at output
    `positions`: gathered columns [P, size*size*C] @ weight [size*size*C, C1] (+ bias [C1],
    ReLU), then @ weight2 [C1, C2] when given -> [P, C1] (or [P, C2])."""
    index = window_index(positions, n, in_h, in_w, out_h, out_w, stride, size)
    cols = with_zero_row(rows).index_select(0, index.view(-1)).view(index.shape[0],
                                                                     weight.shape[0])
    y = cols @ weight if bias is None else torch.addmm(bias, cols, weight)
    if relu:
        y = y.relu_()
    return y if weight2 is None else y @ weight2


def tap_sum_reference(y: Tensor, bias: Tensor, n: int, h: int, w: int, start: int,
                      stride: int) -> Tensor:
    """`fad_sparse::tap_sum`: a 3x3 pad-1 conv's outputs from its tap contributions.

    y [N*H*W, 9*K] holds, per input pixel, the contribution of each tap (ky, kx) to each of K
    output channels; outputs [start, start + O) (O = bias.numel()) at `stride` are the sums of
    nine shifted windows plus bias -> [N, O, H_out, W_out].
    """
    s, o = stride, bias.numel()
    y = y.view(n, h, w, 3, 3, -1)
    ho, wo = (h - 1) // s + 1, (w - 1) // s + 1
    acc = bias.expand(n, ho, wo, o).clone()
    for ky in range(3):
        oy0, oy1 = max(0, -((ky - 1) // s)), min(ho - 1, (h - ky) // s)
        for kx in range(3):
            ox0, ox1 = max(0, -((kx - 1) // s)), min(wo - 1, (w - kx) // s)
            iy0, ix0 = oy0 * s + ky - 1, ox0 * s + kx - 1
            acc[:, oy0:oy1 + 1, ox0:ox1 + 1] += y[
                :, iy0:iy0 + s * (oy1 - oy0) + 1:s, ix0:ix0 + s * (ox1 - ox0) + 1:s,
                ky, kx, start:start + o]
    return acc.permute(0, 3, 1, 2)


def stem_reference(src: Tensor, n: int, h: int, w: int, weight: Tensor, bias: Tensor,
                   kernel_size: int, stride: int, padding: int) -> Tensor:
    """`fad_sparse::stem`: rows [N*H*W, Cin] of the input grid, conv weight [k*k*Cin, C] ordered
    (ky, kx, c) and bias [C] (stride, zero padding), then the 3x3 stride-2 pad-1 max pool and
    the ReLU -> [N*Hp*Wp, C] rows of the pooled grid."""
    cin, c = src.shape[1], weight.shape[1]
    x = src.view(n, h, w, cin).permute(0, 3, 1, 2)
    conv = weight.view(kernel_size, kernel_size, cin, c).permute(3, 2, 0, 1)
    y = F.max_pool2d(F.conv2d(x, conv, bias, stride, padding), 3, 2, 1).relu()
    return y.permute(0, 2, 3, 1).reshape(-1, c)
