"""The direct weight-gradient kernel op (C++ in csrc/conv_wgrad) and its fake impl (shapes for
FakeTensorMode / torch.export): `fad_conv_wgrad::weight_grad(x, grad_out, kernel_size, stride,
padding, dilation)` -> grad_w [O, C, kh, kw] (channels-last strides) of a groups-1 convolution.

No FLOP formula: like aten's convolution backward it is counted where the autograd graph counts
it (FlopCounterMode sees the forward convolution).
"""
from __future__ import annotations

import torch
from torch import Tensor

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
