"""The compiled SparseResNet CPU kernels: op schemas and the FLOP formula.

`torch.ops.fad_sparse.*` (CPU, float32; kernels in csrc/sparse_resnet, loaded by
`fad.ops.build`) replace parts of the pure-PyTorch path at inference: `interpolate` /
`interpolate_into` (the Gaussian interpolation, into a new tensor or onto the residual, the
latter optionally also projecting its output rows: the next block's mask-conv tap rows),
`gather_conv` (a conv at sampled positions: tiled gather + GEMM, optionally a second 1x1 conv),
`gather_windows` (im2col at sampled positions), `tap_sum` (mask-conv tap sums),
`active_rows` (the sampled positions of a mask) and `stem` (the stem's conv, max pool and ReLU,
without writing the conv's output map). `gather_conv` and `stem` have FLOP formulas (their
GEMMs, as FlopCounterMode counts the references' mm and conv); the others replace gathers and
elementwise sums that FlopCounterMode counts on neither path. `fad.ops.sparse.dispatch` picks
kernel or reference.
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import register_flop_formula

from ..build import define_library

_KERNEL_LIB = define_library("fad_sparse", (
    "interpolate(Tensor rows, Tensor index, Tensor mask, Tensor taps, float eps, Tensor? bias, "
    "Tensor? residual, bool relu, bool relu_rows, int n, int h, int w) -> Tensor",
    "interpolate_into(Tensor(a!) residual, Tensor rows, Tensor index, Tensor mask, Tensor taps, "
    "float eps, Tensor? bias, bool relu, int n, int h, int w, Tensor? project, "
    "Tensor(b!)? projected) -> ()",
    "gather_conv(Tensor src, Tensor positions, int n, int in_h, int in_w, int out_h, int out_w, "
    "int kernel_size, int stride, Tensor weight, Tensor? bias, bool relu, Tensor? weight2) "
    "-> Tensor",
    "gather_windows(Tensor src, Tensor positions, int n, int in_h, int in_w, int out_h, "
    "int out_w, int stride) -> Tensor",
    "active_rows(Tensor values) -> (Tensor positions, Tensor row_of)",
    "tap_sum(Tensor y, Tensor bias, int n, int in_h, int in_w, int start, int stride) -> Tensor",
    "stem(Tensor src, int n, int h, int w, Tensor weight, Tensor bias, int kernel_size, "
    "int stride, int padding) -> Tensor",
))


@register_flop_formula(torch.ops.fad_sparse.gather_conv)
def _gather_conv_flops(src_shape, positions_shape, *args, out_shape=None, **kwargs) -> int:
    """2 per multiply-add of the GEMMs: [P, k*k*C] x [k*k*C, C1] (then x [C1, C2])."""
    weight_shape, weight2_shape = args[7], args[10]
    flops = 2 * positions_shape[0] * weight_shape[0] * weight_shape[1]
    if weight2_shape is not None:
        flops += 2 * positions_shape[0] * weight2_shape[0] * weight2_shape[1]
    return flops


@register_flop_formula(torch.ops.fad_sparse.stem)
def _stem_flops(src_shape, n, h, w, weight_shape, bias_shape, kernel_size, stride, padding,
                *args, out_shape=None, **kwargs) -> int:
    """2 per multiply-add of the conv: N*Hc*Wc output positions x [k*k*Cin, C]."""
    hc = (h + 2 * padding - kernel_size) // stride + 1
    wc = (w + 2 * padding - kernel_size) // stride + 1
    return 2 * n * hc * wc * weight_shape[0] * weight_shape[1]
