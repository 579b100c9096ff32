"""Load the compiled SparseResNet CPU kernels (csrc/sparse_resnet), same rules as the MSDA op.

The kernels (`torch.ops.fad_sparse.interpolate`, `.gather_windows`, `.tap_sum`; CPU, float32)
are taken from an ahead-of-time build (`fad.ops._sparse_cpu`) or compiled on first use with
ninja into TORCH_EXTENSIONS_DIR.
The environment variable FAD_SPARSE_BACKEND picks the backend: "auto" (kernel when it builds or
loads, else the pure-PyTorch reference with one warning naming the reason), "reference"
(always PyTorch) or "cpp" (always the kernel; a build failure is an error). CUDA tensors always
use the reference (gathers, cuDNN depthwise convolutions). Importing this module needs no
compiler.
"""
from __future__ import annotations

import torch

from fad.ops.cpu_kernel import BACKENDS, CpuKernel
from fad.utils.csrc import csrc_dir

SOURCES = [csrc_dir() / "sparse_resnet" / "interp_cpu.cpp"]
ENV_VAR = "FAD_SPARSE_BACKEND"
__all__ = ["BACKENDS", "ENV_VAR", "SOURCES", "get_backend", "kernel_available", "kernel_runs"]

_KERNEL = CpuKernel("SparseResNet interpolation", "fad_sparse_cpu", "fad.ops._sparse_cpu",
                    SOURCES, ENV_VAR, extra_cflags=("-Wno-psabi",))


def get_backend() -> str:
    """The backend named by FAD_SPARSE_BACKEND (default "auto")."""
    return _KERNEL.backend()


def kernel_available(device_type: str) -> bool:
    """Whether interpolation on `device_type` runs the compiled kernel (builds it on first use)."""
    return _KERNEL.available(device_type)


def kernel_runs(t: torch.Tensor) -> bool:
    """Whether the compiled CPU kernels handle tensor `t` (CPU, float32, kernel loaded)."""
    return t.device.type == "cpu" and t.dtype == torch.float32 and kernel_available("cpu")
