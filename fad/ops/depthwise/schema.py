"""The depthwise 3x3 kernel ops (C++ in csrc/depthwise) and their FLOP formula: `fad_dw::forward`,
`grad_weight`, and `conv`, the forward with its autograd registered in C++ (the backward runs
the same two kernels; with create_graph it differentiates `F.conv2d`)."""
from __future__ import annotations

import math

import torch
from torch.utils.flop_counter import register_flop_formula

from ..build import define_library

_KERNEL_LIB = define_library("fad_dw", (
    "forward(Tensor x, Tensor weight, int dilation) -> Tensor",
    "grad_weight(Tensor grad, Tensor x, int dilation) -> Tensor",
    "conv(Tensor x, Tensor weight, int dilation) -> Tensor",
))


@register_flop_formula([torch.ops.fad_dw.forward, torch.ops.fad_dw.grad_weight,
                        torch.ops.fad_dw.conv])
def _flops(x_shape, *args, out_shape=None, **kwargs) -> int:
    """FlopCounterMode's count of a depthwise 3x3: 2 x 9 multiply-adds per element of x."""
    return 2 * 9 * math.prod(x_shape)
