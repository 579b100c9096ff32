"""The weight gradient of a convolution summed directly over the positions of its channels-last
maps by the compiled kernel `fad_conv_wgrad::weight_grad` (csrc/conv_wgrad/direct_cpu.cpp):
register blocks of output x input channels swept along each output row, no im2col."""
from __future__ import annotations

import torch
from torch import Tensor

from ..build import load
from . import schema  # noqa: F401  (declares the fad_conv_wgrad op)
from .gemm import Pair


def weight_grad_direct(x: Tensor, grad_out: Tensor, kernel_size: Pair, stride: Pair,
                       padding: Pair, dilation: Pair) -> Tensor:
    """The weight gradient of `conv2d(x, w, stride, padding, dilation, groups=1)`.

    x Tensor[N, C, H, W], grad_out Tensor[N, O, Ho, Wo] (CPU float32/float64, any memory
    layouts; copied channels-last when they are not) -> Tensor[O, C, kh, kw] of x's dtype
    (channels-last strides). Builds or loads the kernel on first use (`ExtensionUnavailable`
    when it cannot).
    """
    load("conv_wgrad_cpu")  # once per process (cached)
    return torch.ops.fad_conv_wgrad.weight_grad(x, grad_out, list(kernel_size), list(stride),
                                                list(padding), list(dilation))
