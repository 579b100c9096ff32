"""The GroupNorm + ReLU kernel ops `fad_gn_relu::forward` / `backward` (C++ in csrc/gn_relu),
their fake impls (shapes for FakeTensorMode / torch.export) and their autograd.

No FLOP formula: like PyTorch's GroupNorm and ReLU, FlopCounterMode counts none here.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..build import define_library
from .reference import group_norm_relu_reference

_KERNEL_LIB = define_library("fad_gn_relu", (
    "forward(Tensor x, Tensor weight, Tensor bias, int groups, float eps) "
    "-> (Tensor, Tensor, Tensor)",
    "backward(Tensor grad, Tensor y, Tensor x, Tensor weight, Tensor mean, Tensor rstd, "
    "int groups) -> (Tensor, Tensor, Tensor)",
))


@torch.library.register_fake("fad_gn_relu::forward", lib=_KERNEL_LIB)
def _forward_fake(x: Tensor, weight: Tensor, bias: Tensor, groups: int,
                  eps: float) -> tuple[Tensor, Tensor, Tensor]:
    stats = x.new_empty((x.shape[0], groups))
    return torch.empty_like(x, memory_format=torch.channels_last), stats, stats.clone()


@torch.library.register_fake("fad_gn_relu::backward", lib=_KERNEL_LIB)
def _backward_fake(grad: Tensor, y: Tensor, x: Tensor, weight: Tensor, mean: Tensor,
                   rstd: Tensor, groups: int) -> tuple[Tensor, Tensor, Tensor]:
    return (torch.empty_like(x, memory_format=torch.channels_last), torch.empty_like(weight),
            torch.empty_like(weight))


class GroupNormReluFunction(torch.autograd.Function):
    """`apply(x, weight, bias, groups, eps)`: x channels-last Tensor[N, C, H, W], weight / bias
    Tensor[C] -> channels-last Tensor[N, C, H, W]."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, groups: int, eps: float) -> Tensor:
        y, mean, rstd = torch.ops.fad_gn_relu.forward(x, weight, bias, groups, eps)
        ctx.save_for_backward(x, weight, bias, y, mean, rstd)
        ctx.groups, ctx.eps = groups, eps
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, bias, y, mean, rstd = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: differentiate the reference
            needs = ctx.needs_input_grad[:3]
            inputs = (x, weight, bias)
            wanted = [t for t, need in zip(inputs, needs) if need]
            out = group_norm_relu_reference(x, ctx.groups, weight, bias, ctx.eps)
            grads = iter(torch.autograd.grad(out, wanted, grad, create_graph=True))
            return (*(next(grads) if need else None for need in needs), None, None)
        grad_x, grad_weight, grad_bias = torch.ops.fad_gn_relu.backward(
            grad, y, x, weight, mean, rstd, ctx.groups)
        return grad_x, grad_weight, grad_bias, None, None
