"""A head's per-level work on two CPU threads at once (SOLVER.PARALLEL_HEAD_LEVELS).

An FCOS head runs the same towers on every FPN level, one level after the other. On a CPU the
fine level (P3) is large enough for the intra-op threads to share its convolutions, while P4-P7
are made of small operator calls that run on one thread whatever the thread count: at 2 threads
one core idles through them. `map_levels` runs the first levels (P3, or P3-P4) on the calling
thread and the others on one worker thread, each with half the intra-op threads, in the forward
and again in the backward:

    outputs = map_levels(self.level, features, self.parallel_levels, self)
    # level(i, Tensor[N, C, H_i, W_i]) -> tuple of Tensor; outputs[i] is level i's tuple
    # parallel_levels = k > 0: levels [0, k) on the calling thread, the others on the worker

The backward runs inside one autograd node whose inputs are the features and the head's
parameters: the head's graph is built on detached copies of the features, and the node's
backward runs `torch.autograd.grad` of the two groups on the two threads, sums the two
threads' parameter gradients and returns them with the features' gradients. So
`loss.backward()`, `backward(inputs=...)` and `torch.autograd.grad(loss, alphas)` (the search's
alpha step) all see the usual gradients; values equal the sequential loop's up to the order of
float sums. Double backward is refused (`once_differentiable`). Inference and evaluation
(grad-disabled calls) run the two groups' plain forwards on the two threads; non-CPU, traced,
compiled and one-thread calls take the plain loop. Each thread's levels (all levels in the
plain loop) run in one `per_forward.levels_scope`, so what is the same at every level is made
once per thread.
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.utils._python_dispatch import _get_current_dispatch_mode

from fad.errors import ConfigError

from .per_forward import levels_scope

LevelFn = Callable[[int, Tensor], tuple[Tensor, ...]]


def map_levels(level: LevelFn, features: Sequence[Tensor], first: int, module: nn.Module
               ) -> list[tuple[Tensor, ...]]:
    """`[level(i, f) for i, f in enumerate(features)]`; with `first` = k > 0 and more than k
    levels, levels [0, k) on this thread and the others on the worker thread, where that
    applies: CPU features, >= 2 intra-op threads, not under torch.compile, tracing or a
    dispatch mode (a FakeTensorMode, a FLOP counter: they hold for the calling thread only).
    With a feature or a parameter of `module` (the one `level` computes with: its parameters'
    gradients come out of the node) needing a gradient, in one autograd node; else (inference)
    the two groups' plain forwards."""
    if not (0 < first < len(features) and _two_threads_apply(features)):
        return _levels(level, features, range(len(features)))
    params = [p for p in module.parameters() if p.requires_grad]
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in (*features, *params))):
        return _on_two_threads(lambda idx: _levels(level, features, idx), len(features), first)
    sizes: list[int] = []
    flat = _ParallelLevels.apply(level, first, sizes, len(features), *features, *params)
    out, start = [], 0
    for n in sizes:
        out.append(tuple(flat[start:start + n]))
        start += n
    return out


def _two_threads_apply(features: Sequence[Tensor]) -> bool:
    """Whether `map_levels` may use its worker thread for these features now."""
    return (torch.get_num_threads() >= 2 and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing() and _get_current_dispatch_mode() is None
            and all(f.device.type == "cpu" for f in features))


def _levels(level: LevelFn, features: Sequence[Tensor], idx: Sequence[int]
            ) -> list[tuple[Tensor, ...]]:
    """`[level(i, features[i]) for i in idx]` in one `levels_scope` (what is the same at every
    level is computed once)."""
    if torch.compiler.is_compiling():
        return [level(i, features[i]) for i in idx]
    with levels_scope():
        return [level(i, features[i]) for i in idx]


def enable_parallel_levels(model: nn.Module, world_size: int, first: int = 1) -> None:
    """Turn on `map_levels`'s two threads in `model.head` (SOLVER.PARALLEL_HEAD_LEVELS): levels
    [0, first) on the calling thread, the others on the worker."""
    head = getattr(model, "head", None)
    if not hasattr(head, "parallel_levels"):
        raise ConfigError("SOLVER.PARALLEL_HEAD_LEVELS needs an FCOS detector (plain or searched "
                          f"head), not {type(model).__name__}; set it False")
    if world_size > 1:
        raise ConfigError("SOLVER.PARALLEL_HEAD_LEVELS is for one process (its threads share "
                          "the cores torchrun gives each rank, and it is untested with DDP); "
                          "set it False under torchrun")
    head.parallel_levels = first


@functools.cache
def _worker() -> ThreadPoolExecutor:
    """The one worker thread (started on first use, reused by every step)."""
    return ThreadPoolExecutor(1, thread_name_prefix="fad-levels")


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """Intra-op threads of the calling thread set to `n` inside the block, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _on_two_threads(work: Callable[[Sequence[int]], list], levels: int, first: int) -> list:
    """`work(range(first, levels))` on the worker while `work(range(first))` runs here; both
    results, level order. Each side gets half the intra-op threads; the caller's grad mode,
    inference mode and autocast state go along."""
    total = torch.get_num_threads()
    mine, theirs = total - total // 2, total // 2
    autocast = torch.is_autocast_enabled("cpu")
    dtype = torch.get_autocast_dtype("cpu")
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def remote() -> list:
        with _threads(theirs), torch.autocast("cpu", dtype=dtype, enabled=autocast):
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                return work(range(first, levels))

    future = _worker().submit(remote)
    try:
        with _threads(mine):
            mine_done = work(range(first))
    finally:
        rest = future.result()
    return mine_done + rest


class _ParallelLevels(torch.autograd.Function):
    """forward(level, first, sizes, n_features, *features, *params) -> every level's outputs,
    flat (`sizes` receives each level's output count); backward on two threads, split as the
    forward: each thread's `autograd.grad` w.r.t. the detached features and the parameters, the
    two threads' parameter gradients summed (thread 0's first) and returned."""

    @staticmethod
    def forward(ctx, level: LevelFn, first: int, sizes: list[int], n_features: int,
                *tensors: Tensor) -> tuple[Tensor, ...]:
        features, params = tensors[:n_features], tensors[n_features:]
        leaves = [f.detach().requires_grad_(f.requires_grad) for f in features]

        def work(idx: Sequence[int]) -> list[tuple[Tensor, ...]]:
            with torch.enable_grad():
                return _levels(level, leaves, idx)

        outs = _on_two_threads(work, len(leaves), first)
        ctx.leaves, ctx.params, ctx.outs, ctx.first = leaves, params, outs, first
        sizes.extend(len(o) for o in outs)
        return tuple(t.detach() for o in outs for t in o)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        per_level, start = [], 0
        for o in ctx.outs:
            per_level.append([(t, g) for t, g in zip(o, grads[start:start + len(o)])
                              if g is not None and t.requires_grad])
            start += len(o)
        leaves, all_params = ctx.leaves, ctx.params
        params = [p for p in all_params if p.requires_grad]

        def work(idx: Sequence[int]) -> list[dict[int, Tensor]]:
            pairs = [p for i in idx for p in per_level[i]]
            wanted = [leaves[i] for i in idx if leaves[i].requires_grad] + params
            if not pairs or not wanted:
                return [{}]
            found = torch.autograd.grad([t for t, _ in pairs], wanted, [g for _, g in pairs],
                                        allow_unused=True)
            return [{id(w): g for w, g in zip(wanted, found) if g is not None}]

        mine, theirs = _on_two_threads(work, len(per_level), ctx.first)
        ctx.leaves = ctx.params = ctx.outs = None

        def summed(t: Tensor) -> Tensor | None:
            a, b = mine.get(id(t)), theirs.get(id(t))
            return b if a is None else a if b is None else a + b

        return (None, None, None, None, *(summed(leaf) for leaf in leaves),
                *(summed(p) if p.requires_grad else None for p in all_params))
