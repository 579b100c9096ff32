"""The compiled SparseResNet CPU kernels: op schemas and when they run.

`torch.ops.fad_sparse.interpolate`, `.gather_windows` and `.tap_sum` (CPU, float32; kernels in
csrc/sparse_resnet, loaded by `fad.ops.kernels`) replace gathers and elementwise sums of the
pure-PyTorch path at inference, so they have no FLOP formula (FlopCounterMode counts neither
path's gathers and sums; the GEMMs around them are counted as usual). The backend setting
MODEL.OPS.SPARSE_BACKEND / FAD_SPARSE_BACKEND picks "auto", "reference" or "cpp"; CUDA tensors
always use the reference (gathers, cuDNN depthwise convolutions).
"""
from __future__ import annotations

import torch

from fad.ops import kernels

__all__ = ["kernel_available", "kernel_runs"]

_KERNEL_LIB = kernels.define_library("fad_sparse", (
    "interpolate(Tensor rows, Tensor index, Tensor mask, Tensor taps, float eps, Tensor? bias, "
    "Tensor? residual, bool relu, bool relu_rows, int n, int h, int w) -> Tensor",
    "interpolate_into(Tensor(a!) residual, Tensor rows, Tensor index, Tensor mask, Tensor taps, "
    "float eps, Tensor? bias, bool relu, int n, int h, int w) -> ()",
    "gather_conv(Tensor src, Tensor positions, int n, int in_h, int in_w, int out_h, int out_w, "
    "int kernel_size, int stride, Tensor weight, Tensor? bias, bool relu, Tensor? weight2) "
    "-> Tensor",
    "gather_windows(Tensor src, Tensor positions, int n, int in_h, int in_w, int out_h, "
    "int out_w, int stride) -> Tensor",
    "active_rows(Tensor values) -> (Tensor positions, Tensor row_of)",
    "tap_sum(Tensor y, Tensor bias, int n, int in_h, int in_w, int start, int stride) -> Tensor",
))


def kernel_available(device_type: str) -> bool:
    """Whether sparse execution on `device_type` runs the compiled kernels (built on first use)."""
    return kernels.use_cpu_kernel("sparse", "sparse_cpu", device_type)


def kernel_runs(t: torch.Tensor) -> bool:
    """Whether the compiled CPU kernels handle tensor `t` (CPU, float32, kernel loaded)."""
    return t.dtype == torch.float32 and kernel_available(t.device.type)
