"""Which GroupNorm + ReLU backend runs: the compiled CPU kernel ("cpp") on CPU float32/float64
channels-last tensors with an affine of the same dtype, else the reference (NCHW input, CUDA,
other dtypes, no affine, torch.compile, backend "reference" by MODEL.OPS.GN_RELU_BACKEND or
FAD_GN_RELU_BACKEND, no compiler; see `fad.ops.backends`)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..backends import use_cpu_kernel
from . import schema  # noqa: F401  (declares the fad_gn_relu ops)
from .reference import group_norm_relu_reference


def kernel_runs(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None) -> bool:
    """Whether `group_norm_relu(x, ..., weight, bias)` runs the compiled kernel (x 4-D
    channels-last float32/float64, weight and bias of its dtype, or not given)."""
    if x.dtype not in (torch.float32, torch.float64) or x.dim() != 4:
        return False
    if any(t is not None and t.dtype != x.dtype for t in (weight, bias)):
        return False
    return (x.is_contiguous(memory_format=torch.channels_last)
            and use_cpu_kernel("gn_relu", "gn_relu_cpu", x.device.type))


def group_norm_relu(x: Tensor, groups: int, weight: Tensor | None, bias: Tensor | None,
                    eps: float = 1e-5) -> Tensor:
    """`relu(F.group_norm(x, groups, weight, bias, eps))`: x Tensor[N, C, H, W], weight / bias
    Tensor[C] or None -> Tensor[N, C, H, W] (channels-last when the kernel runs). Under
    torch.compile the reference (the compiler's own ops)."""
    if (torch.compiler.is_compiling() or weight is None or bias is None
            or not kernel_runs(x, weight, bias)):
        return group_norm_relu_reference(x, groups, weight, bias, eps)
    return torch.ops.fad_gn_relu.gn_relu(x, weight, bias, groups, eps)
