"""The GroupNorm + ReLU kernel ops (C++ in csrc/gn_relu) and their fake impls (shapes for
FakeTensorMode / torch.export): `fad_gn_relu::forward` (y, mean, rstd), `backward`, and
`gn_relu`, the forward with its autograd registered in C++ (the backward runs `backward`; with
create_graph it differentiates PyTorch's `group_norm` + `relu`); `forward_segments` /
`backward_segments`, the same per segment of rows (runs [R, 3]: first row, row count, segment
or -1; mean / rstd [N, S, G]; `segments.py`).

No FLOP formula: like PyTorch's GroupNorm and ReLU, FlopCounterMode counts none here.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..build import define_library

_KERNEL_LIB = define_library("fad_gn_relu", (
    "forward(Tensor x, Tensor weight, Tensor bias, int groups, float eps) "
    "-> (Tensor, Tensor, Tensor)",
    "backward(Tensor grad, Tensor y, Tensor x, Tensor weight, Tensor mean, Tensor rstd, "
    "int groups) -> (Tensor, Tensor, Tensor)",
    "gn_relu(Tensor x, Tensor weight, Tensor bias, int groups, float eps) -> Tensor",
    "forward_segments(Tensor x, Tensor weight, Tensor bias, int groups, float eps, Tensor runs, "
    "int segments) -> (Tensor, Tensor, Tensor)",
    "backward_segments(Tensor grad, Tensor y, Tensor x, Tensor weight, Tensor mean, "
    "Tensor rstd, int groups, Tensor runs) -> (Tensor, Tensor, Tensor)",
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


@torch.library.register_fake("fad_gn_relu::gn_relu", lib=_KERNEL_LIB)
def _gn_relu_fake(x: Tensor, weight: Tensor, bias: Tensor, groups: int, eps: float) -> Tensor:
    return torch.empty_like(x, memory_format=torch.channels_last)


@torch.library.register_fake("fad_gn_relu::forward_segments", lib=_KERNEL_LIB)
def _forward_segments_fake(x: Tensor, weight: Tensor, bias: Tensor, groups: int, eps: float,
                           runs: Tensor, segments: int) -> tuple[Tensor, Tensor, Tensor]:
    stats = x.new_empty((x.shape[0], segments, groups))
    return torch.empty_like(x, memory_format=torch.channels_last), stats, stats.clone()


@torch.library.register_fake("fad_gn_relu::backward_segments", lib=_KERNEL_LIB)
def _backward_segments_fake(grad: Tensor, y: Tensor, x: Tensor, weight: Tensor, mean: Tensor,
                            rstd: Tensor, groups: int, runs: Tensor
                            ) -> tuple[Tensor, Tensor, Tensor]:
    return (torch.empty_like(x, memory_format=torch.channels_last), torch.empty_like(weight),
            torch.empty_like(weight))
