"""Collect what models expose through `fad.modeling.hooks.ModelHooks` from every submodule.

The hooked submodules of a model are found once, at the first call for that model, and kept:
the engine calls these every step, and the walk over all modules is not repeated there. The
model's module tree must therefore be complete by the first call. The cache holds only weak
references (to the model and to its hooked modules), so it never keeps a model alive.
"""
from __future__ import annotations

from weakref import WeakKeyDictionary, ref

from torch import Tensor, nn

from fad.modeling.hooks import ModelHooks

_HOOKED: WeakKeyDictionary[nn.Module, tuple[ref, ...]] = WeakKeyDictionary()


def hooked_modules(model: nn.Module) -> list[ModelHooks]:
    """Every submodule of `model` (itself and DDP's inner module included) that subclasses
    `ModelHooks`, in `model.modules()` order; walked once per model, then cached."""
    found = _HOOKED.get(model)
    if found is None:
        found = tuple(ref(m) for m in model.modules() if isinstance(m, ModelHooks))
        _HOOKED[model] = found
    return [m for m in (r() for r in found) if m is not None]


def collect_aux_losses(model: nn.Module) -> dict[str, Tensor]:
    """Merge `aux_losses()` of every submodule (e.g. SparseResNet's sparse loss)."""
    out: dict[str, Tensor] = {}
    for m in hooked_modules(model):
        out.update(m.aux_losses())
    return out


def collect_log_stats(model: nn.Module) -> dict[str, float]:
    """Merge `log_stats()` of every submodule (mask densities, DAM corr, ...)."""
    out: dict[str, float] = {}
    for m in hooked_modules(model):
        out.update(m.log_stats())
    return out


def set_progress(model: nn.Module, iteration: int, epoch: int) -> None:
    """Tell every submodule the training step about to run (`ModelHooks.set_progress`)."""
    for m in hooked_modules(model):
        m.set_progress(iteration, epoch)
