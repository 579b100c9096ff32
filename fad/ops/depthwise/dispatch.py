"""Which depthwise 3x3 backend runs: the compiled CPU kernel ("cpp") on CPU float32/float64
tensors, else the reference `F.conv2d` (CUDA, other dtypes, CPU autocast, backend "reference" by
MODEL.OPS.DEPTHWISE_BACKEND or FAD_DEPTHWISE_BACKEND, no compiler; see `fad.ops.backends`).

A channels-last input (SOLVER.CHANNELS_LAST training) also takes the reference: the kernel
reads NCHW, so it would copy x to NCHW and return NCHW, while oneDNN's NHWC depthwise stays in
NHWC and, fwd+bwd at [8, 32, 20, 32], is 2.7x faster than the kernel (docs/fad.md, "Where the
demo's time goes"; after the kernel's rewrite in session 7 still 1.13x faster, 1 thread, before
any copy)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..backends import use_cpu_kernel
from . import schema  # noqa: F401  (declares the fad_dw ops)
from .reference import depthwise_conv3x3_reference


def _channels_last(x: Tensor) -> bool:
    """x is a 4-D channels-last (NHWC) tensor that is not also NCHW-contiguous."""
    return (x.dim() == 4 and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last))


def kernel_runs(x: Tensor) -> bool:
    """Whether `depthwise_conv3x3(x, ...)` runs the compiled kernel (not for channels-last x)."""
    return (x.dtype in (torch.float32, torch.float64) and not _channels_last(x)
            and use_cpu_kernel("depthwise", "depthwise_cpu", x.device.type))


def depthwise_conv3x3(x: Tensor, weight: Tensor, dilation: int = 1) -> Tensor:
    """`F.conv2d(x, weight, padding=dilation, dilation=dilation, groups=C)` for
    x Tensor[N, C, H, W] and weight Tensor[C, 1, 3, 3]. Under torch.compile the reference
    (the compiler's own convolution; loading the kernel would break the graph)."""
    if torch.compiler.is_compiling():
        return depthwise_conv3x3_reference(x, weight, dilation)
    if kernel_runs(x) and weight.dtype == x.dtype and not torch.is_autocast_enabled("cpu"):
        return torch.ops.fad_dw.conv(x, weight, dilation)
    return depthwise_conv3x3_reference(x, weight, dilation)
