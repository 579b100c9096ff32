"""Depthwise 3x3 convolution with a compiled CPU forward and backward (csrc/depthwise).

`DepthwiseConv3x3(channels, dilation)` is an `nn.Conv2d(C, C, 3, padding=d, dilation=d,
groups=C, bias=False)` (same parameters and state_dict) whose forward on CPU float32/float64
tensors runs `torch.ops.fad_dw` kernels: PyTorch's CPU depthwise path runs far below its dense
3x3 throughput (several times slower fwd+bwd than this kernel, most of all with dilation), and
the FAD supernet and sinSep / dilated units are full of these convolutions. Everywhere else
(CUDA, other dtypes, backend "reference" by MODEL.OPS.DEPTHWISE_BACKEND or
FAD_DEPTHWISE_BACKEND, no compiler) it is plain `F.conv2d`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import register_flop_formula

from fad.ops import kernels

_KERNEL_LIB = kernels.define_library("fad_dw", (
    "forward(Tensor x, Tensor weight, int dilation) -> Tensor",
    "grad_weight(Tensor grad, Tensor x, int dilation) -> Tensor",
))


class _DepthwiseFunction(torch.autograd.Function):
    """x Tensor[N, C, H, W], weight Tensor[C, 1, 3, 3] -> Tensor[N, C, H, W]."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, dilation: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.dilation = dilation
        return torch.ops.fad_dw.forward(x, weight, dilation)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: differentiate PyTorch's own convolution
            d, needs = ctx.dilation, ctx.needs_input_grad[:2]
            out = F.conv2d(x, weight, padding=d, dilation=d, groups=weight.shape[0])
            wanted = [t for t, need in zip((x, weight), needs) if need]
            grads = iter(torch.autograd.grad(out, wanted, grad, create_graph=True))
            return (*(next(grads) if need else None for need in needs), None)
        grad = grad.contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:  # correlation transposed = correlation with the kernel rotated
            grad_x = torch.ops.fad_dw.forward(grad, weight.flip(2, 3), ctx.dilation)
        if ctx.needs_input_grad[1]:
            grad_w = torch.ops.fad_dw.grad_weight(grad, x, ctx.dilation)
        return grad_x, grad_w, None


@register_flop_formula([torch.ops.fad_dw.forward, torch.ops.fad_dw.grad_weight])
def _flops(x_shape, *args, out_shape=None, **kwargs) -> int:
    """FlopCounterMode's count of a depthwise 3x3: 2 x 9 multiply-adds per element of x."""
    return 2 * 9 * math.prod(x_shape)


def kernel_runs(x: Tensor) -> bool:
    """Whether `depthwise_conv3x3(x, ...)` runs the compiled kernel."""
    return (x.dtype in (torch.float32, torch.float64)
            and kernels.use_cpu_kernel("depthwise", "depthwise_cpu", x.device.type))


def depthwise_conv3x3(x: Tensor, weight: Tensor, dilation: int = 1) -> Tensor:
    """`F.conv2d(x, weight, padding=dilation, dilation=dilation, groups=C)` for
    x Tensor[N, C, H, W] and weight Tensor[C, 1, 3, 3]."""
    if kernel_runs(x) and weight.dtype == x.dtype and not torch.is_autocast_enabled("cpu"):
        return _DepthwiseFunction.apply(x, weight, dilation)
    return F.conv2d(x, weight, padding=dilation, dilation=dilation, groups=weight.shape[0])


class DepthwiseConv3x3(nn.Conv2d):
    """`forward(x: Tensor[N, C, H, W]) -> Tensor[N, C, H, W]`, no bias, padding = dilation."""

    def __init__(self, channels: int, dilation: int = 1):
        super().__init__(channels, channels, 3, padding=dilation, dilation=dilation,
                         groups=channels, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return depthwise_conv3x3(x, self.weight, self.dilation[0])
