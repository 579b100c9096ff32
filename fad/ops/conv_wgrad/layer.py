"""`GemmWgradConv2d` (an `nn.Conv2d` whose training backward computes the weight gradient as
GEMMs where that pays, `dispatch.gemm_weight_grad_runs`) and `use_gemm_weight_grad`, which puts
it in place of a model's eligible `nn.Conv2d` layers."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from .dispatch import gemm_weight_grad_runs, shape_eligible
from .gemm import Pair, weight_grad_gemm


class _Conv2dGemmWgrad(torch.autograd.Function):
    """conv2d(x, weight, bias, stride, padding, dilation, groups 1); backward: the input
    gradient from aten's convolution backward (input part only), the weight gradient from
    `weight_grad_gemm`, the bias gradient as a sum of grad_out."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor | None,
                stride: Pair, padding: Pair, dilation: Pair) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.dilation = stride, padding, dilation
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, stride, padding, dilation)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, list(ctx.stride), list(ctx.padding),
                list(ctx.dilation), False, [0, 0], 1, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_w = weight_grad_gemm(x, grad_out, tuple(weight.shape[2:]), ctx.stride,
                                      ctx.padding, ctx.dilation)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None


class GemmWgradConv2d(nn.Conv2d):
    """An `nn.Conv2d` (same parameters and state dict) whose training convolutions take their
    weight gradient from `weight_grad_gemm` when its settings are `shape_eligible` and
    `gemm_weight_grad_runs` says so; `forward(x: Tensor[N, C, H, W]) -> Tensor[N, O, Ho, Wo]`
    as nn.Conv2d's. Subclasses that convolve with another weight (e.g. one with a norm folded
    in) pass it to `_conv_forward`."""

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if x.dim() == 4 and shape_eligible(self) and gemm_weight_grad_runs(x, weight):
            return _Conv2dGemmWgrad.apply(x, weight, bias, self.stride, self.padding,
                                          self.dilation)
        return super()._conv_forward(x, weight, bias)


def use_gemm_weight_grad(model: nn.Module) -> int:
    """Make every `nn.Conv2d` of `model` (exactly that class) whose settings are
    `shape_eligible` a `GemmWgradConv2d`, in place (its class only: the same module object,
    parameters, hooks and state dict). Returns the number of layers changed."""
    convs = [m for m in model.modules() if type(m) is nn.Conv2d and shape_eligible(m)]
    for conv in convs:
        conv.__class__ = GemmWgradConv2d
    return len(convs)
