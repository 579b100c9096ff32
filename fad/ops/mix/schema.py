"""The mixing kernel ops `fad_mix::forward` / `backward` (C++ in csrc/mix) and their autograd.

No FLOP formula: like PyTorch's GroupNorm, ReLU and adds, FlopCounterMode counts none here.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..build import define_library
from .reference import gn_relu_sum_reference

_KERNEL_LIB = define_library("fad_mix", (
    "forward(Tensor[] xs, Tensor scale, Tensor shift, Tensor? base, int groups, float eps) "
    "-> (Tensor, Tensor, Tensor)",
    "backward(Tensor grad, Tensor[] xs, Tensor scale, Tensor shift, Tensor mean, Tensor rstd, "
    "int groups) -> (Tensor[], Tensor, Tensor)",
))


class GnReluSumFunction(torch.autograd.Function):
    """`apply(groups, eps, scale, shift, base, *xs)`: xs K contiguous Tensor[N, C, H, W],
    scale / shift Tensor[K, C], base Tensor[N, C, H, W] or None -> Tensor[N, C, H, W]."""

    @staticmethod
    def forward(ctx, groups: int, eps: float, scale: Tensor, shift: Tensor,
                base: Tensor | None, *xs: Tensor) -> Tensor:
        out, mean, rstd = torch.ops.fad_mix.forward(list(xs), scale, shift, base, groups, eps)
        ctx.save_for_backward(scale, shift, mean, rstd, *xs)
        ctx.groups, ctx.eps, ctx.has_base = groups, eps, base is not None
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        scale, shift, mean, rstd, *xs = ctx.saved_tensors
        grad_base = grad if ctx.has_base and ctx.needs_input_grad[4] else None
        if torch.is_grad_enabled():  # create_graph: differentiate the reference
            needs = ctx.needs_input_grad[2:4] + ctx.needs_input_grad[5:]
            inputs = (scale, shift, *xs)
            out = gn_relu_sum_reference(list(xs), scale, shift, ctx.groups, ctx.eps)
            wanted = [t for t, need in zip(inputs, needs) if need]
            grads = iter(torch.autograd.grad(out, wanted, grad, create_graph=True))
            scale_g, shift_g, *xs_g = (next(grads) if need else None for need in needs)
            return None, None, scale_g, shift_g, grad_base, *xs_g
        grad_xs, grad_scale, grad_shift = torch.ops.fad_mix.backward(
            grad, xs, scale, shift, mean, rstd, ctx.groups)
        return None, None, grad_scale, grad_shift, grad_base, *grad_xs
