"""GroupNorm + ReLU per segment of a map's positions: `group_norm_relu_segments`.

The H*W positions of every sample (row-major) are split into runs, a [R, 3] int64 tensor of
(first position, count, segment s in [0, S) or -1), covering the positions in order. Each
segment is normalized on its own, as if it were a map of its own: statistics per sample,
segment and group, the same per-channel affine, then ReLU; positions of no segment (-1) give 0.
`fad.modeling.fcos.mosaic` packs the FPN levels into one map this way, a segment per level.

The compiled CPU kernel (`fad_gn_relu::forward_segments` / `backward_segments`, csrc/gn_relu)
runs where the plain op's does (`dispatch.kernel_runs`); elsewhere the reference: F.group_norm
of each segment's positions gathered, scattered back into zeros.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from .dispatch import kernel_runs

_local = threading.local()


@contextlib.contextmanager
def segments_scope(runs: Tensor, segments: int) -> Iterator[None]:
    """Inside (this thread), `GroupNormReLU` layers normalize per segment of these runs."""
    outer = getattr(_local, "segments", None)
    _local.segments = (runs, segments)
    try:
        yield
    finally:
        _local.segments = outer


def current_segments() -> tuple[Tensor, int] | None:
    """(runs, segments) of the innermost `segments_scope` of this thread, or None."""
    return getattr(_local, "segments", None)


def segment_positions(runs: Tensor, segments: int) -> list[Tensor]:
    """Each segment's positions (int64, ascending) from runs [R, 3]."""
    found: list[list[int]] = [[] for _ in range(segments)]
    for first, count, segment in runs.tolist():
        if segment >= 0:
            found[segment].extend(range(first, first + count))
    return [torch.tensor(p, dtype=torch.long) for p in found]


def group_norm_relu_segments_reference(x: Tensor, groups: int, weight: Tensor | None,
                                       bias: Tensor | None, eps: float, runs: Tensor,
                                       segments: int) -> Tensor:
    """x Tensor[N, C, H, W], weight / bias Tensor[C] or None, runs Tensor[R, 3] ->
    Tensor[N, C, H, W] (channels-last)."""
    n, c, h, w = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(n, h * w, c)
    out = rows.new_zeros(rows.shape)
    for positions in segment_positions(runs, segments):
        positions = positions.to(x.device)
        part = rows.index_select(1, positions).transpose(1, 2)  # [N, C, P]
        normed = F.relu(F.group_norm(part, groups, weight, bias, eps))
        out = out.index_copy(1, positions, normed.transpose(1, 2))
    return out.view(n, h, w, c).permute(0, 3, 1, 2)


class _GroupNormReluSegments(torch.autograd.Function):
    """The kernel's forward and backward (first-order only)."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor, groups: int,
                eps: float, runs: Tensor, segments: int) -> Tensor:
        y, mean, rstd = torch.ops.fad_gn_relu.forward_segments(x, weight, bias, groups, eps,
                                                               runs, segments)
        ctx.save_for_backward(x, weight, y, mean, rstd, runs)
        ctx.groups = groups
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor):
        x, weight, y, mean, rstd, runs = ctx.saved_tensors
        grad_x, grad_w, grad_b = torch.ops.fad_gn_relu.backward_segments(
            grad, y, x, weight, mean, rstd, ctx.groups, runs)
        return grad_x, grad_w, grad_b, None, None, None, None


def group_norm_relu_segments(x: Tensor, groups: int, weight: Tensor | None,
                             bias: Tensor | None, eps: float, runs: Tensor,
                             segments: int) -> Tensor:
    """relu(GroupNorm) of each segment of x Tensor[N, C, H, W] (runs Tensor[R, 3], module
    docstring), 0 outside every segment -> Tensor[N, C, H, W] (channels-last)."""
    if (torch.compiler.is_compiling() or weight is None or bias is None
            or not kernel_runs(x, weight, bias)):
        return group_norm_relu_segments_reference(x, groups, weight, bias, eps, runs, segments)
    return _GroupNormReluSegments.apply(x, weight, bias, groups, eps, runs, segments)
