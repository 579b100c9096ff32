"""`GemmWgradConv2d` (an `nn.Conv2d` whose training backward computes the weight gradient as
GEMMs where that pays, `dispatch.gemm_weight_grad_runs`) and `use_gemm_weight_grad`, which puts
it in place of a model's eligible `nn.Conv2d` layers."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from .dispatch import gemm_weight_grad_runs, shape_eligible
from .gemm import weight_grad_gemm


class _Conv2dGemmWgrad(torch.autograd.Function):
    """conv2d(x, weight, bias, stride 1, padding, dilation, groups 1); backward: the input
    gradient from aten's convolution backward (input part only), the weight gradient from
    `weight_grad_gemm`, the bias gradient as a sum of grad_out."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor | None,
                padding: tuple[int, int], dilation: tuple[int, int]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.dilation, ctx.has_bias = padding, dilation, bias is not None
        return F.conv2d(x, weight, bias, 1, padding, dilation)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, [1, 1], list(ctx.padding), list(ctx.dilation), False,
                [0, 0], 1, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_w = weight_grad_gemm(x, grad_out, tuple(weight.shape[2:]), ctx.padding,
                                      ctx.dilation)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None


class GemmWgradConv2d(nn.Conv2d):
    """An `nn.Conv2d` (same parameters and state dict) built for `shape_eligible` settings;
    `forward(x: Tensor[N, C, H, W]) -> Tensor[N, O, Ho, Wo]` as nn.Conv2d's, its weight
    gradient from `weight_grad_gemm` when `gemm_weight_grad_runs` says so."""

    def forward(self, x: Tensor) -> Tensor:
        (kh, kw), (ph, pw), (dh, dw) = self.kernel_size, self.padding, self.dilation
        out_hw = (x.shape[-2] + 2 * ph - dh * (kh - 1), x.shape[-1] + 2 * pw - dw * (kw - 1))
        if x.dim() == 4 and gemm_weight_grad_runs(x, self.weight, out_hw):
            return _Conv2dGemmWgrad.apply(x, self.weight, self.bias, self.padding, self.dilation)
        return super().forward(x)


def use_gemm_weight_grad(model: nn.Module) -> int:
    """Make every `nn.Conv2d` of `model` (exactly that class) whose settings are
    `shape_eligible` a `GemmWgradConv2d`, in place (its class only: the same module object,
    parameters, hooks and state dict). Returns the number of layers changed."""
    convs = [m for m in model.modules() if type(m) is nn.Conv2d and shape_eligible(m)]
    for conv in convs:
        conv.__class__ = GemmWgradConv2d
    return len(convs)
