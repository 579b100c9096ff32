"""Collect auxiliary losses and logged statistics that submodules expose."""
from __future__ import annotations

from torch import Tensor, nn


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def collect_aux_losses(model: nn.Module) -> dict[str, Tensor]:
    """Merge `aux_losses()` of every submodule that defines it (e.g. SparseResNet's sparse loss)."""
    out: dict[str, Tensor] = {}
    for m in _unwrap(model).modules():
        if hasattr(m, "aux_losses"):
            out.update(m.aux_losses())
    return out


def collect_log_stats(model: nn.Module) -> dict[str, float]:
    """Merge `log_stats()` of every submodule that defines it (mask densities, DAM corr, ...)."""
    out: dict[str, float] = {}
    for m in _unwrap(model).modules():
        if hasattr(m, "log_stats"):
            out.update(m.log_stats())
    return out
