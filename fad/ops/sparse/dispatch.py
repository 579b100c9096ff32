"""Kernel or reference for each SparseResNet op: the compiled CPU kernels (`torch.ops.fad_sparse`)
on CPU float32 tensors at inference, else the pure-PyTorch reference (CUDA: gathers, GEMMs,
cuDNN convolutions). The setting MODEL.OPS.SPARSE_BACKEND / FAD_SPARSE_BACKEND picks "auto",
"reference" or "cpp" (see `fad.ops.backends`)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..backends import use_cpu_kernel
from .reference import (
    EPS,
    active_rows_reference,
    gather_conv_reference,
    gather_windows_reference,
    interpolate_rows_reference,
    stem_reference,
    tap_sum_reference,
)


def kernel_available(device_type: str) -> bool:
    """Whether sparse execution on `device_type` runs the compiled kernels (built on first use)."""
    return use_cpu_kernel("sparse", "sparse_cpu", device_type)


def kernel_runs(t: Tensor) -> bool:
    """Whether the compiled CPU kernels handle tensor `t` (CPU, float32, kernel loaded)."""
    return t.dtype == torch.float32 and kernel_available(t.device.type)


def interpolate_rows(rows: Tensor, index: Tensor, mask: Tensor, taps: Tensor,
                     size: tuple[int, int, int], bias: Tensor | None = None,
                     residual: Tensor | None = None, relu: bool = False,
                     relu_rows: bool = False, into_residual: bool = False,
                     eps: float = EPS, project: Tensor | None = None,
                     projected: Tensor | None = None) -> Tensor:
    """Interpolate features known only at sampled positions, then add bias/residual, ReLU.

    Args:
        rows: [P, C] features of the sampled positions.
        index: [N*H*W] int64 row of each position in `rows` (any value in [0, P) where the
            mask is 0).
        mask: [N*H*W] mask values m >= 0 (0 = not sampled).
        taps: [k] 1-D factor of the Gaussian kernel.
        size: (N, H, W) of the position grid (row-major, positions are n*H*W + y*W + x).
        bias: optional [C] added after interpolation.
        residual: optional [N*H*W, C] added after the bias.
        relu: apply ReLU last.
        relu_rows: use ReLU(rows) as the features (fuses the producer's ReLU).
        into_residual: write the result onto `residual` (contiguous; no new memory) and return
            it; not with relu_rows.
        project: optional [C, K] with into_residual: `projected` [N*H*W, K] (contiguous) is
            then filled with result @ project. The kernel multiplies each group of output lines
            right after writing it (in cache), instead of reading the whole result again.

    Returns:
        [N*H*W, C]: row p is the interpolated feature of position p. On the CPU the compiled
        kernel visits only sampled neighbours; elsewhere `interpolate_rows_reference`.
    """
    n, h, w = size
    if (project is None) != (projected is None) or (project is not None and not into_residual):
        raise ValueError("project needs projected and into_residual (and projected needs project)")
    if into_residual:
        if residual is None or relu_rows or not residual.is_contiguous():
            raise ValueError("into_residual needs a contiguous residual and relu_rows False")
        if kernel_runs(rows) and (projected is None or projected.is_contiguous()):
            torch.ops.fad_sparse.interpolate_into(
                residual, rows.contiguous(), index.contiguous(), mask.contiguous(),
                taps.detach().float().contiguous(), eps,
                None if bias is None else bias.contiguous(), relu, n, h, w,
                None if project is None else project.detach().float().contiguous(), projected)
            return residual
        residual.copy_(interpolate_rows_reference(rows, index, mask, taps, size, bias, residual,
                                                  relu, eps=eps))
        if project is not None:
            torch.mm(residual, project.to(residual.dtype), out=projected)
        return residual
    if kernel_runs(rows):
        return torch.ops.fad_sparse.interpolate(
            rows.contiguous(), index.contiguous(), mask.contiguous(),
            taps.detach().float().contiguous(), eps,
            None if bias is None else bias.contiguous(),
            None if residual is None else residual.contiguous(), relu, relu_rows, n, h, w)
    return interpolate_rows_reference(rows, index, mask, taps, size, bias, residual, relu,
                                      relu_rows, eps)


def active_rows(values: Tensor) -> tuple[Tensor, Tensor]:
    """Mask values [M] -> (positions [P] with value != 0, row_of [M]: each position's row among
    them, 0 where unused)."""
    if kernel_runs(values):
        return tuple(torch.ops.fad_sparse.active_rows(values))
    return active_rows_reference(values)


def gather_windows(rows: Tensor, positions: Tensor, n: int, in_h: int, in_w: int, out_h: int,
                   out_w: int, stride: int) -> Tensor:
    """im2col columns [P, 9 * C], ordered (ky, kx, c), of a 3x3 pad-1 conv with `stride` at the
    output `positions` of the [n, out_h, out_w] grid, reading rows [n*in_h*in_w, C]."""
    if kernel_runs(rows):
        return torch.ops.fad_sparse.gather_windows(rows.contiguous(), positions, n, in_h, in_w,
                                                   out_h, out_w, stride)
    return gather_windows_reference(rows, positions, n, in_h, in_w, out_h, out_w, stride)


def gather_conv(rows: Tensor, positions: Tensor, n: int, in_h: int, in_w: int, out_h: int,
                out_w: int, size: int, stride: int, weight: Tensor, bias: Tensor | None = None,
                relu: bool = False, weight2: Tensor | None = None) -> Tensor:
    """A size x size (1 or 3, padding size // 2) conv at the output `positions` of the
    [n, out_h, out_w] grid, reading rows [n*in_h*in_w, C]: weight [size*size*C, C1] ordered
    (ky, kx, c), bias [C1] or None, ReLU after the bias, then times weight2 [C1, C2] when given.
    Returns [P, C1] (or [P, C2]); on the CPU the compiled kernel gathers and multiplies tile by
    tile, elsewhere one gather and GEMM."""
    if kernel_runs(rows):
        return torch.ops.fad_sparse.gather_conv(rows.contiguous(), positions, n, in_h, in_w,
                                                out_h, out_w, size, stride, weight, bias, relu,
                                                weight2)
    return gather_conv_reference(rows, positions, n, in_h, in_w, out_h, out_w, size, stride,
                                 weight, bias, relu, weight2)


def stem(rows: Tensor, n: int, h: int, w: int, weight: Tensor, bias: Tensor, kernel_size: int,
         stride: int, padding: int) -> Tensor:
    """The ResNet stem at inference: a kernel_size x kernel_size conv (`stride`, zero `padding`)
    with weight [k*k*Cin, C] ordered (ky, kx, c) and bias [C] over the rows [N*H*W, Cin] of the
    input grid, then the 3x3 stride-2 pad-1 max pool and the ReLU -> [N*Hp*Wp, C] rows of the
    pooled grid. On the CPU the compiled kernel computes the conv line by line into a ring of
    three lines and pools them in cache (no conv output map); elsewhere `stem_reference`."""
    if not (torch.is_grad_enabled() and (rows.requires_grad or weight.requires_grad)) and (
            kernel_runs(rows)):
        return torch.ops.fad_sparse.stem(rows.contiguous(), n, h, w, weight.contiguous(),
                                         bias.contiguous(), kernel_size, stride, padding)
    return stem_reference(rows, n, h, w, weight, bias, kernel_size, stride, padding)


def tap_sum(y: Tensor, bias: Tensor, n: int, h: int, w: int, start: int,
            stride: int) -> Tensor:
    """Outputs [start, start + O) (O = bias.numel()) of a 3x3 pad-1 conv at `stride` from its
    tap contributions y [N*H*W, 9*K] -> [N, O, H_out, W_out] (`tap_sum_reference`); the kernel
    runs at CPU inference (no gradient through y)."""
    if not (torch.is_grad_enabled() and y.requires_grad) and kernel_runs(y):
        ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
        acc = torch.ops.fad_sparse.tap_sum(y, bias.detach().contiguous(), n, h, w, start,
                                           stride)
        return acc.view(n, ho, wo, bias.numel()).permute(0, 3, 1, 2)
    return tap_sum_reference(y, bias, n, h, w, start, stride)
