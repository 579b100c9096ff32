"""When a convolution's weight gradient runs as GEMMs (`weight_grad_gemm`) instead of inside
aten's convolution backward (oneDNN on the CPU).

MODEL.OPS.CONV_WGRAD_BACKEND / FAD_CONV_WGRAD_BACKEND (`fad.ops.backends`): "reference" never,
"gemm" for every eligible call, "auto" for the eligible calls it pays for: on an AVX2 CPU
(torch's CPU capability; oneDNN's weight gradient there is its `jit:avx2` / `jit_1x1:avx2`
kernel), a channels-last input (an NCHW step measured even) and >= `MIN_OUT_CHANNELS` output
channels (>= `MIN_OUT_CHANNELS_1X1` for a 1x1 kernel), measured layer by layer on an AMD EPYC
AVX2 host (docs/ops.md). Eligible: a training forward (grad mode on, the weight requires grad,
no autocast, not under torch.compile) of a float32/float64 CPU convolution with groups 1 and
zero padding given as numbers.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..backends import get_backend

MIN_OUT_CHANNELS = 128
MIN_OUT_CHANNELS_1X1 = 256


def shape_eligible(conv: nn.Conv2d) -> bool:
    """Whether `conv`'s hyper-parameters allow the GEMM weight gradient: groups 1, zero padding
    given as numbers."""
    return (conv.groups == 1 and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str))


def gemm_weight_grad_runs(x: Tensor, weight: Tensor) -> bool:
    """Whether the call conv(x: Tensor[N, C, H, W], weight: Tensor[O, C, kh, kw]) of a
    `shape_eligible` convolution takes the GEMM weight gradient under the backend in force."""
    backend = get_backend("conv_wgrad")
    if (backend == "reference" or not torch.is_grad_enabled() or not weight.requires_grad
            or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64)
            or weight.dtype != x.dtype or torch.is_autocast_enabled("cpu")
            or torch.compiler.is_compiling()):
        return False
    if backend == "gemm":
        return True
    return (torch.backends.cpu.get_cpu_capability() == "AVX2"
            and x.is_contiguous(memory_format=torch.channels_last)
            and weight.shape[0] >= (MIN_OUT_CHANNELS_1X1 if weight.shape[2:] == (1, 1)
                                    else MIN_OUT_CHANNELS))
