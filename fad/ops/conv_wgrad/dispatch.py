"""Which kernel computes a convolution's weight gradient in training: GEMMs over blocks of its
im2col (`weight_grad_gemm`), the compiled direct kernel (`weight_grad_direct`), or aten's
convolution backward (oneDNN on the CPU).

MODEL.OPS.CONV_WGRAD_BACKEND / FAD_CONV_WGRAD_BACKEND (`fad.ops.backends`): "reference" always
aten's, "gemm" the GEMMs for every eligible call, "cpp" the direct kernel for every eligible
call (an error when it cannot be built), "auto" the one that pays: on an AVX2 CPU (torch's CPU
capability; oneDNN's weight gradient there is its `jit:avx2` / `jit_1x1:avx2` kernel, at about
half the rate of its forward convolution) with a channels-last input (an NCHW step measured
even), the GEMMs for >= `MIN_OUT_CHANNELS` output channels (>= `MIN_OUT_CHANNELS_1X1` for a 1x1
kernel), the direct kernel for the other float32 layers with a kernel larger than 1x1 and a
multiple of `DIRECT_CHANNEL_BLOCK` input channels (when it builds; else aten's, with one
warning), measured layer by layer on an AMD EPYC AVX2 host (docs/ops.md). Eligible: a training
forward (grad mode on, the weight requires grad, no autocast, not under torch.compile) of a
float32/float64 CPU convolution with groups 1 and zero padding given as numbers.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ..backends import get_backend, use_cpu_kernel

MIN_OUT_CHANNELS = 128
MIN_OUT_CHANNELS_1X1 = 256
DIRECT_CHANNEL_BLOCK = 16  # float32 input channels per register block of the direct kernel

Path = Literal["gemm", "direct"]


def shape_eligible(conv: nn.Conv2d) -> bool:
    """Whether `conv`'s hyper-parameters allow another weight gradient than aten's: groups 1,
    zero padding given as numbers."""
    return (conv.groups == 1 and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str))


def weight_grad_path(x: Tensor, weight: Tensor) -> Path | None:
    """Which weight gradient the call conv(x: Tensor[N, C, H, W], weight: Tensor[O, C, kh, kw])
    of a `shape_eligible` convolution takes under the backend in force: "gemm", "direct", or
    None for aten's convolution backward."""
    backend = get_backend("conv_wgrad")
    if (backend == "reference" or not torch.is_grad_enabled() or not weight.requires_grad
            or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64)
            or weight.dtype != x.dtype or torch.is_autocast_enabled("cpu")
            or torch.compiler.is_compiling()):
        return None
    if backend == "gemm":
        return "gemm"
    if backend == "cpp":
        use_cpu_kernel("conv_wgrad", "conv_wgrad_cpu", "cpu")  # raises when it cannot load
        return "direct"
    if (torch.backends.cpu.get_cpu_capability() != "AVX2"
            or not x.is_contiguous(memory_format=torch.channels_last)):
        return None
    one_by_one = weight.shape[2:] == (1, 1)
    if weight.shape[0] >= (MIN_OUT_CHANNELS_1X1 if one_by_one else MIN_OUT_CHANNELS):
        return "gemm"
    if (not one_by_one and x.dtype == torch.float32 and x.shape[1] % DIRECT_CHANNEL_BLOCK == 0
            and use_cpu_kernel("conv_wgrad", "conv_wgrad_cpu", "cpu")):
        return "direct"
    return None
