"""Sparse execution of SparseResNet blocks at inference: compute only the sampled positions.

Feature maps are handled as rows: [N, C, H, W] in channels-last memory is an [N*H*W, C] matrix
(row p = n*H*W + y*W + x) without copying. For a block with masks m1 (conv1) and m2 (conv2):
1. conv1 at the P1 positions with m1 > 0: gather their rows (1x1: the rows themselves; 3x3:
   im2col of the 9 neighbour rows, zeros for padding), one GEMM with the BN-folded weight and
   bias;
2. interpolate ReLU(conv1 output) to every position (`interpolate_rows`, ReLU fused);
3. conv2 at the P2 positions with m2 > 0 by im2col gather + GEMM (DCN: offsets from a gather of
   the block input, bilinear sampling of the four corners), BN folded, ReLU; then conv3 (1x1)
   by GEMM without its bias;
4. one fused call interpolates conv3's output to every position and adds BN3's bias, the
   shortcut and the ReLU.
Step 4 equals the dense order (interpolate conv2's output, then conv3 + BN3) because conv3 + BN3
is affine per position and the interpolation is a per-position weighted average: moving the
linear part across it is exact, so the result matches the masked dense path to float rounding
while conv1/conv2/conv3 cost d1 / d2 / d2 of their dense work.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .interpolation import interpolate_rows
from .kernel import kernel_runs


@dataclass
class Active:
    """The sampled positions of a mask [N, 1, H, W]."""

    positions: Tensor  # [P] flat positions with m > 0
    row_of: Tensor  # [N*H*W] row of each position among `positions` (0 where not sampled)
    values: Tensor  # [N*H*W] mask values
    n: int
    h: int
    w: int

    @classmethod
    def of(cls, m: Tensor) -> "Active":
        n, _, h, w = m.shape
        values = m.reshape(-1).contiguous()
        positions = torch.nonzero(values, as_tuple=True)[0]
        row_of = torch.zeros(values.numel(), dtype=torch.long, device=m.device)
        row_of[positions] = torch.arange(positions.numel(), device=m.device)
        return cls(positions, row_of, values, n, h, w)

    def interpolate(self, rows: Tensor, taps: Tensor, **kwargs) -> Tensor:
        return interpolate_rows(rows, self.row_of, self.values, taps, (self.n, self.h, self.w),
                                **kwargs)


def as_rows(x: Tensor) -> Tensor:
    """[N, C, H, W] -> [N*H*W, C] (a view when x is channels-last)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def _with_zero_row(rows: Tensor) -> Tensor:
    """[M, C] -> [M + 1, C] with an all-zero last row (the target of padding taps)."""
    return torch.cat([rows, rows.new_zeros(1, rows.shape[1])])


def window_index(out: Active, in_h: int, in_w: int, stride: int) -> Tensor:
    """[P, 9] input positions read by a 3x3 pad-1 conv at the active outputs (padding: N*H*W)."""
    p = out.positions
    n, rem = p // (out.h * out.w), p % (out.h * out.w)
    offsets = torch.arange(-1, 2, device=p.device)
    iy = (rem // out.w * stride)[:, None] + offsets  # [P, 3]
    ix = (rem % out.w * stride)[:, None] + offsets
    valid = ((iy >= 0) & (iy < in_h))[:, :, None] & ((ix >= 0) & (ix < in_w))[:, None, :]
    src = (n * in_h * in_w)[:, None, None] + iy[:, :, None] * in_w + ix[:, None, :]
    return torch.where(valid, src, out.n * in_h * in_w).view(-1, 9)


def gather_windows(rows: Tensor, out: Active, in_h: int, in_w: int, stride: int) -> Tensor:
    """im2col columns [P, 9 * C], ordered (ky, kx, c), of a 3x3 pad-1 conv with `stride` at the
    active positions of `out`, reading rows [N*in_h*in_w, C] of the input grid."""
    if kernel_runs(rows):
        return torch.ops.fad_sparse.gather_windows(rows.contiguous(), out.positions, out.n, in_h,
                                                   in_w, out.h, out.w, stride)
    index = window_index(out, in_h, in_w, stride)
    return _with_zero_row(rows).index_select(0, index.view(-1)).view(index.shape[0], -1)


def deform_windows(rows: Tensor, out: Active, offsets: Tensor, in_h: int, in_w: int,
                   stride: int) -> Tensor:
    """Bilinear im2col of a 3x3 pad-1 deformable conv (torchvision `deform_conv2d` sampling).

    rows [N*in_h*in_w, C]; offsets [P, 18] are (dy, dx) per tap in row-major tap order; corners
    outside the map read 0. Returns [P, 9 * C] ordered (ky, kx, c).
    """
    rows_ext = _with_zero_row(rows)
    p = out.positions
    n, rem = p // (out.h * out.w), p % (out.h * out.w)
    taps = torch.arange(-1, 2, device=p.device, dtype=offsets.dtype)
    py = ((rem // out.w * stride).to(offsets.dtype)[:, None, None] + taps[None, :, None])
    px = ((rem % out.w * stride).to(offsets.dtype)[:, None, None] + taps[None, None, :])
    py = (py + offsets[:, 0::2].view(-1, 3, 3)).reshape(-1, 9)
    px = (px + offsets[:, 1::2].view(-1, 3, 3)).reshape(-1, 9)
    y0, x0 = py.floor(), px.floor()
    ly, lx = py - y0, px - x0
    y0, x0 = y0.long(), x0.long()
    base = (n * in_h * in_w)[:, None]
    cols = None
    for dy, wy in ((0, 1 - ly), (1, ly)):
        for dx, wx in ((0, 1 - lx), (1, lx)):
            yy, xx = y0 + dy, x0 + dx
            valid = (yy >= 0) & (yy < in_h) & (xx >= 0) & (xx < in_w)
            src = torch.where(valid, base + yy * in_w + xx, out.n * in_h * in_w)
            corner = rows_ext.index_select(0, src.view(-1)).view(*src.shape, -1)
            term = corner * (wy * wx)[..., None]
            cols = term if cols is None else cols + term
    return cols.reshape(p.shape[0], -1)


def fold_bn(conv: nn.Conv2d, bn: nn.Module | None) -> tuple[Tensor, Tensor | None]:
    """A conv (+ eval BN) as a GEMM: weight [kh*kw*Cin, Cout] ordered (ky, kx, c), bias [Cout]."""
    weight = conv.weight
    bias = conv.bias
    if bn is not None:
        if getattr(bn, "running_var", None) is None:
            raise ValueError("sparse execution needs BatchNorm running statistics "
                             "(MODEL.BACKBONE.NORM FrozenBN or BN with track_running_stats)")
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        weight = weight * scale.view(-1, 1, 1, 1)
        bias = bn.bias - bn.running_mean * scale
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1).t().contiguous(), bias


def folded_weights(block: nn.Module) -> dict[str, tuple[Tensor, Tensor | None]]:
    """BN-folded GEMM weights of a block, cached until a parameter or buffer changes."""
    tensors = list(block.parameters()) + list(block.buffers())
    key = tuple((t.data_ptr(), t._version) for t in tensors)
    cache = getattr(block, "_folded_cache", None)
    if cache is not None and cache[0] == key:
        return cache[1]
    with torch.no_grad():
        folded = {"conv1": fold_bn(block.conv1, block.bn1),
                  "conv2": fold_bn(block.conv2, block.bn2)}
        if hasattr(block, "conv3"):
            folded["conv3"] = fold_bn(block.conv3, block.bn3)
        if block.conv2_offset is not None:
            folded["offset"] = fold_bn(block.conv2_offset, None)
    block._folded_cache = (key, folded)
    return folded


def _conv2_columns(block: nn.Module, f1: Tensor, x: Tensor, a2: Active,
                   weights: dict) -> Tensor:
    """im2col columns [P2, 9 * C] of conv2 (plain or deformable) at the active positions."""
    _, _, h, w = x.shape
    stride = block.conv2.stride[0]
    if block.conv2_offset is None:
        return gather_windows(f1, a2, h, w, stride)
    w_off, b_off = weights["offset"]
    offsets = torch.addmm(b_off, gather_windows(as_rows(x), a2, h, w, stride), w_off)
    return deform_windows(f1, a2, offsets, h, w, stride)


def sparse_bottleneck(block: nn.Module, x: Tensor) -> Tensor:
    """Inference of a SparseBottleneck computing only sampled positions; x [N, Cin, H, W]."""
    n = x.shape[0]
    m1, m2 = block.masks(x)
    a1, a2 = Active.of(m1), Active.of(m2)
    weights = folded_weights(block)
    w1, b1 = weights["conv1"]
    rows1 = torch.addmm(b1, as_rows(x).index_select(0, a1.positions), w1)
    f1 = a1.interpolate(rows1, block.interp1.taps(), relu_rows=True)
    cols = _conv2_columns(block, f1, x, a2, weights)
    w2, b2 = weights["conv2"]
    w3, b3 = weights["conv3"]
    rows3 = torch.addmm(b2, cols, w2).relu_() @ w3
    identity = x if block.downsample is None else block.downsample(x)
    out = a2.interpolate(rows3, block.interp2.taps(), bias=b3, residual=as_rows(identity),
                         relu=True)
    return out.view(n, a2.h, a2.w, -1).permute(0, 3, 1, 2)


def sparse_basic(block: nn.Module, x: Tensor) -> Tensor:
    """Inference of a SparseBasicBlock computing only sampled positions; x [N, Cin, H, W]."""
    n, _, h, w = x.shape
    m1, m2 = block.masks(x)
    a1, a2 = Active.of(m1), Active.of(m2)
    weights = folded_weights(block)
    w1, b1 = weights["conv1"]
    cols1 = gather_windows(as_rows(x), a1, h, w, block.conv1.stride[0])
    rows1 = torch.addmm(b1, cols1, w1)
    f1 = a1.interpolate(rows1, block.interp1.taps(), relu_rows=True)
    w2, b2 = weights["conv2"]
    rows2 = gather_windows(f1, a2, a1.h, a1.w, 1) @ w2
    identity = x if block.downsample is None else block.downsample(x)
    out = a2.interpolate(rows2, block.interp2.taps(), bias=b2, residual=as_rows(identity),
                         relu=True)
    return out.view(n, a2.h, a2.w, -1).permute(0, 3, 1, 2)
