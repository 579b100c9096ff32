"""The depthwise 3x3 kernel ops `fad_dw::forward` / `grad_weight` (C++ in csrc/depthwise), their
autograd (the backward runs the same kernels) and FLOP formula."""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from ..build import define_library
from .reference import depthwise_conv3x3_reference

_KERNEL_LIB = define_library("fad_dw", (
    "forward(Tensor x, Tensor weight, int dilation) -> Tensor",
    "grad_weight(Tensor grad, Tensor x, int dilation) -> Tensor",
))


class DepthwiseFunction(torch.autograd.Function):
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
            needs = ctx.needs_input_grad[:2]
            out = depthwise_conv3x3_reference(x, weight, ctx.dilation)
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
