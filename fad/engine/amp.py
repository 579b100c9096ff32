"""The one mixed-precision policy of every training loop (detector training and the search).

SOLVER.AMP_CPU_SCOPE `backbone` (CPU bf16 only): the autocast covers the detector's `backbone`
(ResNet + FPN) alone, in training mode, and its outputs return to fp32 for the head and the
losses. On an AMX/AVX512-BF16 CPU the backbone's large convolutions are where bf16 pays; the
searched head's many small ops are slower in bf16 (casts around each), so a whole-model bf16
step was no faster there (docs/fad.md, "Where the demo's time goes", session 7).
"""
from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from yacs.config import CfgNode

from fad.errors import ConfigError


def to_float32(value: Any) -> Any:
    """`value` with every floating tensor in it (a tensor, a mapping or a list / tuple of them)
    cast to fp32; the container type is kept."""
    if torch.is_tensor(value):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, Mapping):
        return type(value)((k, to_float32(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(to_float32(v) for v in value)
    return value


class BackboneAutocast:
    """Forward hooks that run `module` under `torch.autocast(device_type, dtype)` in training
    mode and cast its outputs back to fp32; in eval mode they do nothing (inference, fad-test
    and the evaluation after training stay fp32)."""

    def __init__(self, device_type: str, dtype: torch.dtype):
        self.device_type, self.dtype = device_type, dtype
        self._active: torch.autocast | None = None

    def attach(self, module: nn.Module) -> None:
        """Register the hooks on `module` (the exit hook also runs when its forward raises)."""
        module.register_forward_pre_hook(self._enter)
        module.register_forward_hook(self._exit, always_call=True)

    def _enter(self, module: nn.Module, args: tuple) -> None:
        if module.training:
            self._active = torch.autocast(self.device_type, dtype=self.dtype)
            self._active.__enter__()

    def _exit(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if self._active is None:
            return None
        self._active.__exit__(None, None, None)
        self._active = None
        return to_float32(output)


@dataclass(frozen=True)
class AmpPolicy:
    """Autocast dtype (None: full fp32) on `device_type`, whether losses are scaled, and the
    autocast's scope: `model` (the whole forward) or `backbone` (`attach` puts it there)."""

    device_type: str
    dtype: torch.dtype | None
    scope: str = "model"

    @property
    def scaled(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range."""
        return self.dtype == torch.float16

    def autocast(self) -> AbstractContextManager:
        """The autocast context of a forward pass (a no-op context when the policy is fp32)."""
        if self.dtype is None or self.scope != "model":
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def attach(self, model: nn.Module) -> None:
        """With scope `backbone`: the autocast around `model.backbone` (`BackboneAutocast`);
        otherwise nothing. A model without a `backbone` is a ConfigError."""
        if self.dtype is None or self.scope != "backbone":
            return
        backbone = getattr(model, "backbone", None)
        if not isinstance(backbone, nn.Module):
            raise ConfigError(f"SOLVER.AMP_CPU_SCOPE backbone needs a detector with a backbone; "
                              f"{type(model).__name__} has none: use SOLVER.AMP_CPU_SCOPE model")
        BackboneAutocast(self.device_type, self.dtype).attach(backbone)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler, enabled only for fp16 (disabled it passes losses and steps through)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.scaled)


def amp_policy(cfg: CfgNode, device: torch.device, second_order: bool = False) -> AmpPolicy:
    """Mixed precision for a training step on `device`, from `SOLVER.AMP`/`SOLVER.AMP_CPU`.

    - CUDA with SOLVER.AMP: fp16 autocast + GradScaler.
    - CPU with SOLVER.AMP and SOLVER.AMP_CPU: bf16 autocast, no scaler (bf16 keeps fp32's range),
      over the whole forward or, with SOLVER.AMP_CPU_SCOPE backbone, the backbone only (the
      step calls `attach`; a step that does not, such as the search's, runs fp32 then).
    - Otherwise fp32.
    - A second-order search (`second_order`) always runs in fp32: its alpha gradient subtracts
      two alpha gradients taken at w +- eps*v (eps = 0.01 / ||v||, `search.architect`), a
      difference far below fp16/bf16 resolution; and the unrolled step moves the weights by raw
      gradients, where a GradScaler could not skip an overflowing step.
    """
    s = cfg.SOLVER
    if second_order or not s.AMP:
        return AmpPolicy(device.type, None)
    if device.type == "cuda":
        return AmpPolicy("cuda", torch.float16)
    return AmpPolicy(device.type, torch.bfloat16 if s.AMP_CPU else None, s.AMP_CPU_SCOPE)
