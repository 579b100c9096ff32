"""E modules of one structure run as one, on their inputs concatenated over channels.

The mixed edges of a search node (one per predecessor state) run the same candidate units with
different weights on different inputs. With the inputs concatenated over channels,
x = [x_0 | ... | x_{E-1}] (Tensor[N, E*C, H, W]), every layer is one op for all E:

    dense conv k x k    one grouped conv (groups = E)
    1x1 (`Pointwise`)   one batched GEMM (`conv1x1(..., groups=E)`)
    depthwise 3x3       the same depthwise conv over E*C channels
    GroupNorm(G)        GroupNorm(E*G): a group never straddles two inputs
    ReLU, Identity      themselves

and the output is [y_0 | ... | y_{E-1}] with y_e = modules[e](x_e), exactly (float64-checked in
tests/test_nas_batched.py): 1/E of the op calls and autograd nodes of E separate runs, each E
times larger. That matters on the CPU, where the ops of the small FPN levels (P4-P7) sit at their
per-call floor and gain nothing from a second thread (docs/fad.md, supernet, session 11).
The modules' parameters are concatenated once per head forward (`per_forward.once`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fad.modeling.fcos.per_forward import once
from fad.ops.depthwise import DepthwiseConv3x3, depthwise_conv3x3

from .pointwise import Pointwise, conv1x1


def stacked(modules: Sequence[nn.Module], name: str, dim: int = 0) -> Tensor:
    """The parameter `name` of `modules` concatenated along `dim` (the parameter itself for one
    module); made once per head forward."""
    if len(modules) == 1:
        return getattr(modules[0], name)
    return once((name, dim, *modules),
                lambda: torch.cat([getattr(m, name) for m in modules], dim))


def _layer(modules: Sequence[nn.Module], x: Tensor) -> Tensor:
    """One layer (not a container) of every module, batched."""
    first, e = modules[0], len(modules)
    if isinstance(first, DepthwiseConv3x3):
        return depthwise_conv3x3(x, stacked(modules, "weight"), first.dilation[0])
    if isinstance(first, Pointwise):
        bias = None if first.bias is None else stacked(modules, "bias")
        return conv1x1(x, stacked(modules, "weight"), bias, groups=e)
    if isinstance(first, nn.Conv2d) and first.groups == 1 and first.padding_mode == "zeros":
        bias = None if first.bias is None else stacked(modules, "bias")
        return F.conv2d(x, stacked(modules, "weight"), bias, first.stride, first.padding,
                        first.dilation, groups=e)
    if isinstance(first, nn.GroupNorm) and first.affine:
        return F.group_norm(x, e * first.num_groups, stacked(modules, "weight"),
                            stacked(modules, "bias"), first.eps)
    if isinstance(first, nn.ReLU):
        return F.relu(x, inplace=first.inplace)
    if isinstance(first, nn.Identity):
        return x
    raise TypeError(f"{type(first).__name__} has no batched form")


def run(modules: Sequence[nn.Module], x: Tensor, stop: int | None = None) -> Tensor:
    """`[modules[e](x_e) for e]` concatenated over channels, for x = [x_0 | ... | x_{E-1}]
    (Tensor[N, E*C, H, W]) and modules of one structure (layers of the same types and
    hyper-parameters); for `nn.Sequential` modules only their layers [0, stop)."""
    if not isinstance(modules[0], nn.Sequential):
        return _layer(modules, x)
    for layers in list(zip(*modules))[:stop]:
        x = run(layers, x)
    return x
