"""1x1 convolutions of the search and candidate units as plain GEMMs on NCHW CPU tensors.

`conv1x1(x, weight, bias, groups)` equals `F.conv2d(x, weight, bias, groups=groups)` for a 1x1
kernel (stride 1, no padding). On a CPU float tensor whose H x W plane is contiguous (NCHW, or a
channel slice of one) it runs `mm` / `addmm` (batch 1, one group), `bmm` / `baddbmm` (batch > 1
or groups > 1) or `matmul` (both) on the [N, C, H*W] view:
no copies, no layout reorders, the bias fused into the GEMM, and the backward is two GEMMs.
PyTorch's own CPU path for a NCHW 1x1 is oneDNN with 2+ threads (fwd+bwd 1.4-5.7x the GEMMs'
time at the supernet's shapes, 2 threads) and THNN's `slow_conv2d` at 1 thread and batch < 16
(about 1.0-1.1x, a zero fill and a bias copy more). Channels-last, CUDA, meta and other dtypes
keep `F.conv2d` (oneDNN's NHWC 1x1, cuDNN, FLOP counting of the meta device).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def gemm_runs(x: Tensor) -> bool:
    """Whether `conv1x1(x, ...)` runs the GEMMs: a 4-D CPU float32/float64 tensor whose H x W
    planes are contiguous (not channels-last)."""
    return (x.device.type == "cpu" and x.dim() == 4 and x.dtype in (torch.float32, torch.float64)
            and x.stride(3) == 1 and x.stride(2) == x.shape[3])


def conv1x1(x: Tensor, weight: Tensor, bias: Tensor | None = None, groups: int = 1) -> Tensor:
    """x Tensor[N, C, H, W], weight Tensor[O, C / groups, 1, 1], bias Tensor[O] or None ->
    Tensor[N, O, H, W] (NCHW-contiguous on the GEMM path). With groups = E, output group e is
    the 1x1 of input group e (`fad.nas.batched`): one batched GEMM over the E groups."""
    if not gemm_runs(x) or weight.dtype != x.dtype:
        return F.conv2d(x, weight, bias, groups=groups)
    n, c, h, w = x.shape
    o = weight.shape[0]
    if groups > 1:
        w3 = weight.reshape(groups, o // groups, c // groups)
        b3 = None if bias is None else bias.view(groups, o // groups, 1)
        if n == 1:
            x3 = x.view(groups, c // groups, h * w)
            y = torch.bmm(w3, x3) if b3 is None else torch.baddbmm(b3, w3, x3)
        else:
            y = torch.matmul(w3, x.view(n, groups, c // groups, h * w))
            y = y if b3 is None else y + b3
        return y.view(n, o, h, w)
    w2 = weight.reshape(o, c)
    if n == 1:
        x2 = x.view(c, h * w)
        y = torch.mm(w2, x2) if bias is None else torch.addmm(bias.unsqueeze(1), w2, x2)
    else:
        x3, w3 = x.flatten(2), w2.expand(n, -1, -1)
        y = torch.bmm(w3, x3) if bias is None else torch.baddbmm(bias.view(1, -1, 1), w3, x3)
    return y.view(n, -1, h, w)


class Pointwise(nn.Conv2d):
    """`nn.Conv2d(in, out, 1, bias=bias)` (same parameters and state_dict) whose forward is
    `conv1x1`: `forward(x: Tensor[N, in, H, W]) -> Tensor[N, out, H, W]`."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return conv1x1(x, self.weight, self.bias)
