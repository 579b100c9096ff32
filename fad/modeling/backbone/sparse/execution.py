"""Sparse execution of SparseResNet blocks at inference: compute only the sampled positions.

Feature maps are handled as rows: [N, C, H, W] in channels-last memory is an [N*H*W, C] matrix
(row p = n*H*W + y*W + x) without copying. BatchNorm is folded into every conv (weight and
bias). For a block with masks m1 (conv1) and m2 (conv2):
1. conv1 at the P1 positions with m1 > 0 (`conv_at`: tiles of gathered input rows times the
   weight; 3x3 convs gather the im2col window);
2. interpolate ReLU(conv1 output) to every position (`interpolate_rows`, ReLU fused);
3. conv2 at the P2 positions with m2 > 0, ReLU, and conv3 (1x1, without its bias) in the same
   tiles (DCN: offsets from a gather of the block input, bilinear sampling of the four corners);
4. one fused call interpolates conv3's output to every position and adds BN3's bias, the
   shortcut and the ReLU, writing onto the shortcut tensor when nothing else holds it; while the
   body runs (`linked`), the same call also multiplies the output rows, still in cache, by the
   next block's mask-conv tap weight, so the next block's masks need no pass over the map.
Step 4 equals the dense order (interpolate conv2's output, then conv3 + BN3) because conv3 + BN3
is affine per position and the interpolation is a per-position weighted average: moving the
linear part across it is exact, so the result matches the masked dense path to float rounding
while conv1/conv2/conv3 cost d1 / d2 / d2 of their dense work.

Dense fallback: a conv whose mask density exceeds `DENSE_ABOVE` (measured, see
docs/sparse_resnet.md) runs densely instead (one GEMM over every row for a 1x1 conv, the oneDNN
convolution for a 3x3), and the interpolation then reads its rows by position; the result is the
same function. The stem and the downsample shortcuts run as BN-folded dense convolutions.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fad.ops import sparse as ops

from ..fold_frozen_bn import norm_affine
from .masks import mask_tap_weight

# A conv computes densely when the density of its mask exceeds this: the crossover of the
# sparse and the dense block lies at 0.9-1.0 in every R-101 stage at 800x1344, 1 and 2 threads
# (measured: docs/sparse_resnet.md, "Dense fallback").
DENSE_ABOVE = {"conv1": 0.85, "conv2": 0.85}


@dataclass
class Active:
    """The sampled positions of a mask [N, 1, H, W]."""

    positions: Tensor  # [P] flat positions with m > 0
    row_of: Tensor  # [N*H*W] row of each position among the computed rows (0 where unused)
    values: Tensor  # [N*H*W] mask values
    n: int
    h: int
    w: int

    @classmethod
    def of(cls, m: Tensor) -> Active:
        n, _, h, w = m.shape
        values = m.reshape(-1).contiguous()
        return cls(*ops.active_rows(values), values, n, h, w)

    @property
    def density(self) -> float:
        """Share of positions with m > 0."""
        return self.positions.numel() / max(self.values.numel(), 1)

    def dense(self) -> Active:
        """The same mask with rows computed at every position (row p = position p)."""
        every = torch.arange(self.values.numel(), device=self.values.device)
        return Active(every, every, self.values, self.n, self.h, self.w)

    def interpolate(self, rows: Tensor, taps: Tensor, **kwargs) -> Tensor:
        return ops.interpolate_rows(rows, self.row_of, self.values, taps, (self.n, self.h, self.w),
                                **kwargs)


def runs_dense(kind: str, active: Active) -> bool:
    """Whether conv `kind` ("conv1" or "conv2") computes every position (`DENSE_ABOVE`)."""
    return bool(active.density > DENSE_ABOVE[kind])  # host sync: dense or sparse conv


def as_rows(x: Tensor) -> Tensor:
    """[N, C, H, W] -> [N*H*W, C] (a view when x is channels-last)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def as_map(rows: Tensor, n: int, h: int, w: int) -> Tensor:
    """[N*H*W, C] rows -> the [N, C, H, W] channels-last view."""
    return rows.view(n, h, w, -1).permute(0, 3, 1, 2)


def gather_windows(rows: Tensor, out: Active, in_h: int, in_w: int, stride: int) -> Tensor:
    """im2col columns [P, 9 * C], ordered (ky, kx, c), of a 3x3 pad-1 conv with `stride` at the
    active positions of `out`, reading rows [N*in_h*in_w, C] of the input grid."""
    return ops.gather_windows(rows, out.positions, out.n, in_h, in_w, out.h, out.w, stride)


def conv_at(rows: Tensor, out: Active, in_h: int, in_w: int, size: int, stride: int,
            weight: Tensor, bias: Tensor | None = None, relu: bool = False,
            weight2: Tensor | None = None) -> Tensor:
    """A size x size (1 or 3, padding size // 2) conv at the active positions of `out`.

    Args:
        rows: [N*in_h*in_w, C] rows of the input grid.
        weight: [size*size*C, C1] GEMM weight ordered (ky, kx, c); bias [C1] or None.
        relu: ReLU after the bias.
        weight2: optional [C1, C2]: the result is then multiplied by it (a following 1x1 conv).

    Returns:
        [P, C1] (or [P, C2]): row i is output position out.positions[i]. On the CPU the compiled
        kernel gathers and multiplies tile by tile; elsewhere one gather and GEMM.
    """
    return ops.gather_conv(rows, out.positions, out.n, in_h, in_w, out.h, out.w, size, stride,
                           weight, bias, relu, weight2)


def deform_windows(rows: Tensor, out: Active, offsets: Tensor, in_h: int, in_w: int,
                   stride: int) -> Tensor:
    """Bilinear im2col of a 3x3 pad-1 deformable conv (torchvision `deform_conv2d` sampling).

    rows [N*in_h*in_w, C]; offsets [P, 18] are (dy, dx) per tap in row-major tap order; corners
    outside the map read 0. Returns [P, 9 * C] ordered (ky, kx, c).
    """
    rows_ext = ops.with_zero_row(rows)
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
            corner = rows_ext.index_select(0, src.view(-1)).view(*src.shape, rows.shape[1])
            term = corner * (wy * wx)[..., None]
            cols = term if cols is None else cols + term
    return cols.reshape(p.shape[0], 9 * rows.shape[1])


@dataclass(frozen=True)
class Folded:
    """A conv with its eval BatchNorm folded in, in both layouts."""

    conv: Tensor  # [Cout, Cin, kh, kw] (F.conv2d)
    gemm: Tensor  # [kh*kw*Cin, Cout] ordered (ky, kx, c)
    bias: Tensor | None  # [Cout]


def fold_bn(conv: nn.Conv2d, bn: nn.Module | None) -> Folded:
    """A conv (+ eval BN) as one conv / GEMM with a bias."""
    weight = conv.weight
    bias = conv.bias
    if bn is not None:
        if getattr(bn, "running_var", None) is None:
            raise ValueError("sparse execution needs BatchNorm running statistics "
                             "(MODEL.BACKBONE.NORM FrozenBN or BN with track_running_stats)")
        scale, bias = norm_affine(bn)
        weight = weight * scale.view(-1, 1, 1, 1)
        if conv.bias is not None:
            bias = bias + conv.bias * scale
    gemm = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1).t().contiguous()
    return Folded(weight.contiguous(memory_format=torch.channels_last), gemm, bias)


def _folded(module: nn.Module, pairs: dict[str, tuple[nn.Conv2d, nn.Module | None]]
            ) -> dict[str, Folded]:
    """`fold_bn` of each (conv, bn) pair, cached on `module` until one of their tensors
    changes."""
    tensors = [t for pair in pairs.values() for m in pair if m is not None
               for t in list(m.parameters()) + list(m.buffers())]
    key = (tuple(pairs), tuple((t.data_ptr(), t._version) for t in tensors))
    cache = getattr(module, "_folded_cache", None)
    if cache is not None and cache[0] == key:
        return cache[1]
    with torch.no_grad():
        folded = {name: fold_bn(conv, bn) for name, (conv, bn) in pairs.items()}
    module._folded_cache = (key, folded)
    return folded


def _downsample_pair(block: nn.Module) -> tuple[nn.Conv2d, nn.Module] | None:
    """(conv, bn) of a torchvision downsample shortcut, None when it has another form."""
    ds = block.downsample
    if (isinstance(ds, nn.Sequential) and len(ds) == 2 and isinstance(ds[0], nn.Conv2d)
            and getattr(ds[1], "running_var", None) is not None):
        return ds[0], ds[1]
    return None


def folded_weights(block: nn.Module) -> dict[str, Folded]:
    """BN-folded convs of a block (conv1..3, DCN offsets, downsample), cached."""
    pairs = {"conv1": (block.conv1, block.bn1), "conv2": (block.conv2, block.bn2)}
    if hasattr(block, "conv3"):
        pairs["conv3"] = (block.conv3, block.bn3)
    if block.conv2_offset is not None:
        pairs["offset"] = (block.conv2_offset, None)
    if _downsample_pair(block) is not None:
        pairs["downsample"] = _downsample_pair(block)
    return _folded(block, pairs)


def _shortcut(block: nn.Module, x: Tensor, weights: dict[str, Folded]) -> Tensor:
    """The block's shortcut of x: x itself, or the BN-folded downsample conv."""
    if block.downsample is None:
        return x
    if "downsample" not in weights:
        return block.downsample(x)
    ds = weights["downsample"]
    return F.conv2d(x, ds.conv, ds.bias, block.downsample[0].stride)


class MaskLink:
    """What a block hands the block after it in sparse execution: the tap rows [N*H*W, K] of the
    next block's mask convs (`small_conv3x3`'s GEMM of its input), computed by this block's last
    interpolation from its output rows while they are in cache (`_finish`)."""

    def __init__(self, weight: Tensor):
        self.weight = weight  # [C, K] `mask_tap_weight` of the next block's mask convs
        self.rows: Tensor | None = None  # [N*H*W, K], set by `_finish`
        self.source: tuple[Tensor, int] | None = None  # the map they are of, and its version

    def hand(self, out: Tensor, rows: Tensor) -> None:
        """Record the tap rows of the output map `out`."""
        self.rows, self.source = rows, (out, out._version)

    def take(self, x: Tensor) -> Tensor | None:
        """The tap rows when they are of x unchanged since (then dropped here), else None."""
        rows, source = self.rows, self.source
        self.rows = self.source = None
        if source is None or source[0] is not x or source[1] != x._version:
            return None
        return rows


@contextlib.contextmanager
def linked(blocks: Sequence[nn.Module]) -> Iterator[None]:
    """Within: each block of sparse execution computes the mask tap rows of the block after it
    (`MaskLink`) when both run sparse execution without gradients (the kernel's projection is
    inference only); a block without a link computes its own."""
    try:
        if not torch.is_grad_enabled():
            for block, following in zip(blocks, blocks[1:]):
                if block._use_sparse() and following._use_sparse():
                    link = MaskLink(mask_tap_weight(following.mask_convs()).detach())
                    block.link_out = following.link_in = link
        yield
    finally:
        for block in blocks:
            block.link_in = block.link_out = None


def _finish(block: nn.Module, x: Tensor, a2: Active, rows: Tensor, bias: Tensor,
            weights: dict[str, Folded]) -> Tensor:
    """Interpolate the last conv's rows, add `bias`, the shortcut and the ReLU -> [N, C, H, W].

    The result is written onto the shortcut when it is a new tensor (downsample) or when the
    block may overwrite its input (`overwrite_input`, set by `run_stage`); then, with a
    `link_out`, the same kernel call also computes the next block's mask tap rows."""
    identity = _shortcut(block, x, weights)
    into = identity is not x or block.overwrite_input
    link = block.link_out if into else None
    project = projected = None
    if link is not None:
        project = link.weight.to(identity.dtype)
        projected = identity.new_empty(a2.n * a2.h * a2.w, project.shape[1])
    out = a2.interpolate(rows, block.interp2.taps(), bias=bias, residual=as_rows(identity),
                         relu=True, into_residual=into, project=project, projected=projected)
    out = as_map(out, a2.n, a2.h, a2.w)
    if link is not None:
        link.hand(out, projected)
    return out


def _conv2_deform(block: nn.Module, f1: Tensor, x: Tensor, a2: Active,
                  weights: dict[str, Folded]) -> Tensor:
    """Deformable conv2 (BN, ReLU) then conv3 at the active positions -> [P2, 4C]."""
    _, _, h, w = x.shape
    stride = block.conv2.stride[0]
    off = weights["offset"]
    offsets = torch.addmm(off.bias, gather_windows(as_rows(x), a2, h, w, stride), off.gemm)
    cols = deform_windows(f1, a2, offsets, h, w, stride)
    conv2 = weights["conv2"]
    return torch.addmm(conv2.bias, cols, conv2.gemm).relu_() @ weights["conv3"].gemm


def active_masks(block: nn.Module, x: Tensor) -> tuple[Active, Active]:
    """The block's masks of x as `Active` positions (their tap rows from the previous block when
    it computed them, `MaskLink`), and the block's densities [2]. On the CPU
    they come from the positions' counts (no separate counting pass over the masks); on a GPU
    the masks count them on the device, as a host-made tensor would be one more copy in and a
    branch on the positions' count."""
    on_cpu = x.device.type == "cpu"
    taps = None if block.link_in is None else block.link_in.take(x)
    m1, m2 = block.masks(x, count=not on_cpu, taps=taps)
    a1, a2 = Active.of(m1), Active.of(m2)
    if on_cpu:
        block.density = torch.tensor([a1.density, a2.density])
    return a1, a2


def sparse_bottleneck(block: nn.Module, x: Tensor) -> Tensor:
    """Inference of a SparseBottleneck computing only sampled positions; x [N, Cin, H, W]."""
    n, _, h, w = x.shape
    a1, a2 = active_masks(block, x)
    weights = folded_weights(block)
    conv1, conv2, conv3 = weights["conv1"], weights["conv2"], weights["conv3"]
    x_rows = as_rows(x)
    if runs_dense("conv1", a1):
        a1 = a1.dense()
        rows1 = torch.addmm(conv1.bias, x_rows, conv1.gemm)
    else:
        rows1 = conv_at(x_rows, a1, h, w, 1, 1, conv1.gemm, conv1.bias, relu=True)
    f1 = a1.interpolate(rows1, block.interp1.taps(), relu_rows=True)
    stride = block.conv2.stride[0]
    if block.conv2_offset is not None:
        rows3 = _conv2_deform(block, f1, x, a2, weights)
    elif runs_dense("conv2", a2):
        a2 = a2.dense()
        f2 = F.conv2d(as_map(f1, n, h, w), conv2.conv, conv2.bias, stride, 1).relu_()
        rows3 = as_rows(f2) @ conv3.gemm
    else:
        rows3 = conv_at(f1, a2, h, w, 3, stride, conv2.gemm, conv2.bias, relu=True,
                        weight2=conv3.gemm)
    return _finish(block, x, a2, rows3, conv3.bias, weights)


def sparse_basic(block: nn.Module, x: Tensor) -> Tensor:
    """Inference of a SparseBasicBlock computing only sampled positions; x [N, Cin, H, W]."""
    n, _, h, w = x.shape
    a1, a2 = active_masks(block, x)
    weights = folded_weights(block)
    conv1, conv2 = weights["conv1"], weights["conv2"]
    stride = block.conv1.stride[0]
    if runs_dense("conv1", a1):
        a1 = a1.dense()
        rows1 = as_rows(F.conv2d(x, conv1.conv, conv1.bias, stride, 1))
    else:
        rows1 = conv_at(as_rows(x), a1, h, w, 3, stride, conv1.gemm, conv1.bias, relu=True)
    f1 = a1.interpolate(rows1, block.interp1.taps(), relu_rows=True)
    if runs_dense("conv2", a2):
        a2 = a2.dense()
        rows2 = as_rows(F.conv2d(as_map(f1, n, a1.h, a1.w), conv2.conv, None, 1, 1))
    else:
        rows2 = conv_at(f1, a2, a1.h, a1.w, 3, 1, conv2.gemm)
    return _finish(block, x, a2, rows2, conv2.bias, weights)


def sparse_stem(body: nn.Module, x: Tensor) -> Tensor:
    """The body's stem (conv1, BN, ReLU, the 3x3 stride-2 max pool) with BN folded into the conv;
    x channels-last [N, 3, H, W] -> channels-last [N, 64, H / 4, W / 4]. The ReLU runs after
    the max pool (both are monotone, so max(ReLU(y)) = ReLU(max(y)) exactly), and on the CPU
    the conv, pool and ReLU are one kernel that never writes the conv's output map
    (`fad.ops.sparse.stem`)."""
    stem = _folded(body, {"stem": (body.conv1, body.bn1)})["stem"]
    n, _, h, w = x.shape
    k, s, p = body.conv1.kernel_size[0], body.conv1.stride[0], body.conv1.padding[0]
    rows = ops.stem(as_rows(x), n, h, w, stem.gemm, stem.bias, k, s, p)
    # the conv has (h + 2p - k) // s + 1 lines, the pool halves that, rounding up
    return as_map(rows, n, (h + 2 * p - k) // s // 2 + 1, (w + 2 * p - k) // s // 2 + 1)


def run_stage(layer: nn.Sequential, x: Tensor) -> Tensor:
    """`layer(x)` for a stage of blocks. From the second block on, a block's input is the previous
    block's output, which nothing else holds, so sparse blocks may write their output onto it
    (`overwrite_input`): no new memory to fault in per block."""
    for i, block in enumerate(layer):
        block.overwrite_input = i > 0
    try:
        return layer(x)
    finally:
        for block in layer:
            block.overwrite_input = False
