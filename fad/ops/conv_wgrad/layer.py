"""`WgradConv2d` (an `nn.Conv2d` whose training backward computes the weight gradient with the
GEMMs or the direct kernel where that pays, `dispatch.weight_grad_path`) and
`use_fast_weight_grad`, which puts it in place of a model's eligible `nn.Conv2d` layers."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from .direct import weight_grad_direct
from .dispatch import Path, shape_eligible, weight_grad_path
from .gemm import Pair, weight_grad_gemm


class _Conv2dWgrad(torch.autograd.Function):
    """conv2d(x, weight, bias, stride, padding, dilation, groups 1); backward: the input
    gradient from aten's convolution backward (input part only), the weight gradient from
    `weight_grad_gemm` (path "gemm") or `weight_grad_direct` ("direct"), the bias gradient as a
    sum of grad_out."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor | None,
                stride: Pair, padding: Pair, dilation: Pair, path: Path) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.dilation, ctx.path = stride, padding, dilation, path
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
            weight_grad = weight_grad_gemm if ctx.path == "gemm" else weight_grad_direct
            grad_w = weight_grad(x, grad_out, tuple(weight.shape[2:]), ctx.stride,
                                 ctx.padding, ctx.dilation)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None, None


class WgradConv2d(nn.Conv2d):
    """An `nn.Conv2d` (same parameters and state dict) whose training convolutions take their
    weight gradient from `weight_grad_gemm` or `weight_grad_direct` when its settings are
    `shape_eligible` and `weight_grad_path` names one; `forward(x: Tensor[N, C, H, W]) ->
    Tensor[N, O, Ho, Wo]` as nn.Conv2d's. Subclasses that convolve with another weight (e.g. one
    with a norm folded in) pass it to `_conv_forward`."""

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        path = weight_grad_path(x, weight) if x.dim() == 4 and shape_eligible(self) else None
        if path is not None:
            return _Conv2dWgrad.apply(x, weight, bias, self.stride, self.padding,
                                      self.dilation, path)
        return super()._conv_forward(x, weight, bias)


def use_fast_weight_grad(model: nn.Module) -> int:
    """Make every `nn.Conv2d` of `model` (exactly that class) whose settings are
    `shape_eligible` a `WgradConv2d`, in place (its class only: the same module object,
    parameters, hooks and state dict). Returns the number of layers changed."""
    convs = [m for m in model.modules() if type(m) is nn.Conv2d and shape_eligible(m)]
    for conv in convs:
        conv.__class__ = WgradConv2d
    return len(convs)
