"""The direct weight-gradient kernel op (C++ in csrc/conv_wgrad), its fake impl (shapes for
FakeTensorMode / torch.export) and FLOP formula: `fad_conv_wgrad::weight_grad(x, grad_out,
kernel_size, stride, padding, dilation)` -> grad_w [O, C, kh, kw] (channels-last strides) of a
groups-1 convolution.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from ..build import define_library

_KERNEL_LIB = define_library("fad_conv_wgrad", (
    "weight_grad(Tensor x, Tensor grad_out, int[2] kernel_size, int[2] stride, int[2] padding, "
    "int[2] dilation) -> Tensor",
))


@torch.library.register_fake("fad_conv_wgrad::weight_grad", lib=_KERNEL_LIB)
def _weight_grad_fake(x: Tensor, grad_out: Tensor, kernel_size: list[int], stride: list[int],
                      padding: list[int], dilation: list[int]) -> Tensor:
    return x.new_empty((grad_out.shape[1], x.shape[1], *kernel_size)).to(
        memory_format=torch.channels_last)


@register_flop_formula(torch.ops.fad_conv_wgrad.weight_grad)
def _flops(x_shape, grad_shape, kernel_size, *args, out_shape=None, **kwargs) -> int:
    """FlopCounterMode's count, as aten's weight gradient: 2 multiply-adds' worth per output
    position, output channel, input channel and tap (padding taps included)."""
    return 2 * math.prod(grad_shape) * x_shape[1] * math.prod(kernel_size)
