"""Which depthwise 3x3 backend runs: the compiled CPU kernel ("cpp") on CPU float32/float64
tensors, NCHW or channels-last, else the reference `F.conv2d` (CUDA, other dtypes, CPU autocast,
backend "reference" by MODEL.OPS.DEPTHWISE_BACKEND or FAD_DEPTHWISE_BACKEND, no compiler; see
`fad.ops.backends`).

A channels-last input (SOLVER.CHANNELS_LAST training) runs the kernel's NHWC path
(csrc/depthwise/depthwise_nhwc_cpu.cpp), whose output and input gradient stay channels-last;
oneDNN's NHWC depthwise, which such an input took before, is several times slower fwd+bwd at
the demo's maps (docs/fad.md, "Where the demo's time goes", session 9)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..backends import use_cpu_kernel
from . import schema  # noqa: F401  (declares the fad_dw ops)
from .reference import depthwise_conv3x3_reference


def kernel_runs(x: Tensor) -> bool:
    """Whether `depthwise_conv3x3(x, ...)` runs the compiled kernel."""
    return (x.dtype in (torch.float32, torch.float64)
            and use_cpu_kernel("depthwise", "depthwise_cpu", x.device.type))


def depthwise_conv3x3(x: Tensor, weight: Tensor, dilation: int = 1) -> Tensor:
    """`F.conv2d(x, weight, padding=dilation, dilation=dilation, groups=C)` for
    x Tensor[N, C, H, W] (NCHW or channels-last; the output keeps x's layout) and weight
    Tensor[C, 1, 3, 3]. Under torch.compile the reference (the compiler's own convolution;
    loading the kernel would break the graph)."""
    if torch.compiler.is_compiling():
        return depthwise_conv3x3_reference(x, weight, dilation)
    if kernel_runs(x) and weight.dtype == x.dtype and not torch.is_autocast_enabled("cpu"):
        return torch.ops.fad_dw.conv(x, weight, dilation)
    return depthwise_conv3x3_reference(x, weight, dilation)
