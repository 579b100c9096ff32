"""Collect what models expose through `fad.modeling.hooks.ModelHooks` from every submodule."""
from __future__ import annotations

from torch import Tensor, nn

from fad.modeling.hooks import ModelHooks


def _hooked_modules(model: nn.Module) -> list[ModelHooks]:
    """Every submodule (DDP's inner module included) that implements `ModelHooks`."""
    return [m for m in model.modules() if isinstance(m, ModelHooks)]


def collect_aux_losses(model: nn.Module) -> dict[str, Tensor]:
    """Merge `aux_losses()` of every submodule (e.g. SparseResNet's sparse loss)."""
    out: dict[str, Tensor] = {}
    for m in _hooked_modules(model):
        out.update(m.aux_losses())
    return out


def collect_log_stats(model: nn.Module) -> dict[str, float]:
    """Merge `log_stats()` of every submodule (mask densities, DAM corr, ...)."""
    out: dict[str, float] = {}
    for m in _hooked_modules(model):
        out.update(m.log_stats())
    return out


def set_progress(model: nn.Module, iteration: int, epoch: int) -> None:
    """Tell every submodule the training step about to run (`ModelHooks.set_progress`)."""
    for m in _hooked_modules(model):
        m.set_progress(iteration, epoch)
