"""Which mixing backend runs: the compiled CPU kernel ("cpp") when every tensor is a CPU
float32/float64 tensor of one dtype, else the reference (CUDA, other dtypes, CPU autocast,
torch.compile, backend "reference" by MODEL.OPS.MIX_BACKEND or FAD_MIX_BACKEND, no compiler;
see `fad.ops.backends`)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..backends import use_cpu_kernel
from .reference import gn_relu_sum_reference
from .schema import GnReluSumFunction


def kernel_runs(x: Tensor) -> bool:
    """Whether `gn_relu_sum` on inputs like `x` runs the compiled kernel."""
    return (x.dtype in (torch.float32, torch.float64) and x.dim() == 4
            and not torch.is_autocast_enabled("cpu")
            and use_cpu_kernel("mix", "mix_cpu", x.device.type))


def gn_relu_sum(xs: list[Tensor], scale: Tensor, shift: Tensor, groups: int, eps: float,
                base: Tensor | None = None) -> Tensor:
    """`base + sum_k relu(group_norm(xs[k], groups, scale[k], shift[k], eps))`: xs K tensors
    [N, C, H, W], scale / shift Tensor[K, C], base Tensor[N, C, H, W] or None ->
    Tensor[N, C, H, W]. Under torch.compile the reference (the compiler's own ops)."""
    if torch.compiler.is_compiling() or not kernel_runs(xs[0]):
        return gn_relu_sum_reference(xs, scale, shift, groups, eps, base)
    dtype = xs[0].dtype
    tensors = [*xs, scale, shift, *([] if base is None else [base])]
    if any(t.dtype != dtype or t.device != xs[0].device for t in tensors):
        return gn_relu_sum_reference(xs, scale, shift, groups, eps, base)
    return GnReluSumFunction.apply(groups, eps, scale, shift, base,
                                   *(x.contiguous() for x in xs))
