"""Tensors that are the same at every FPN level, computed once per head forward.

A head runs its towers on P3-P7 in turn, and a searched tower would recompute at every level
tensors that depend only on its parameters and alphas (the alphas' softmax; each node's mixed
edges' 1x1 weights and GroupNorm affines times the mixing weights, `fad.nas.repshare.fold`; the
edges' parameters concatenated to run them together, `fad.nas.batched.stacked`): five times
the small ops, their autograd nodes and their backward passes. `map_levels` runs each thread's
levels inside `levels_scope()`; there `once(key, make)` returns the first `make()` of `key`
again (the value is in the autograd graph once; the levels' gradients meet in it):

    with levels_scope():                      # one head forward, on one thread
        w = once(tower, lambda: alphas.softmax(-1))   # computed at the first level only

Outside a scope (a tower called on its own) and under torch.compile (which merges the repeats
itself), `once` calls `make()` every time. Each thread has its own scope: the two threads of
`map_levels` build separate graphs, so they must not share these tensors.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch

T = TypeVar("T")
_local = threading.local()


@contextlib.contextmanager
def levels_scope() -> Iterator[None]:
    """Inside, `once` keeps what it computes (this thread only); dropped on exit."""
    outer = getattr(_local, "values", None)
    _local.values = {}
    try:
        yield
    finally:
        _local.values = outer


def once(key: object, make: Callable[[], T]) -> T:
    """`make()` the first time `key` (a module, or a tuple of modules and names: modules hash
    by identity) is asked for in this thread's scope, the same value after; `make()` each time
    outside a scope or compiling."""
    if torch.compiler.is_compiling():
        return make()
    values = getattr(_local, "values", None)
    if values is None:
        return make()
    if key not in values:
        values[key] = make()
    return values[key]
