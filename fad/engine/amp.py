"""The one mixed-precision policy of every training loop (detector training and the search).

SOLVER.AMP_CPU_SCOPE (CPU bf16 only; all three leave inference, fad-test and the evaluation fp32):
- `model`: the whole training forward under autocast.
- `backbone`: the detector's `backbone` (ResNet + FPN) alone, in training mode; its outputs
  return to fp32 for the head and the losses. On an AMX/AVX512-BF16 CPU the backbone's large
  convolutions are where bf16 pays; the searched head's many small ops are slower in bf16
  (casts around each), so a whole-model bf16 step was no faster there (docs/fad.md, "Where the
  demo's time goes", session 7).
- `towers`: `backbone`, plus each dense k x k convolution (groups 1, k > 1) of the head's towers
  (`head.*tower*`) on a map of at least `TOWER_MIN_POSITIONS` positions (N * H * W): the big
  3x3s of P3 / P4 run on AMX, each with its output cast back to fp32; the towers' GroupNorms,
  ReLUs, 1x1s, depthwise convs, the smaller levels and the predictors stay fp32 (session 8).
"""
from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from yacs.config import CfgNode

from fad.errors import ConfigError

# Tower convolutions on fewer positions (N * H * W) than this stay fp32: a 32 -> 32 3x3 forward +
# backward at 1 thread on the AMX Xeon of docs/fad.md, fp32 vs bf16 with the casts: [8, 32, 28, 20]
# 3.61 -> 1.86 ms, [8, 32, 14, 10] 1.48 -> 1.09 ms, [8, 32, 4, 3] 0.58 -> 0.70 ms.
TOWER_MIN_POSITIONS = 1024


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


class ModuleAutocast:
    """Forward hooks that run one module under `torch.autocast(device_type, dtype)` in training
    mode and cast its outputs back to fp32; in eval mode, and on an input (its first argument, a
    tensor [N, C, *spatial]) of fewer than `min_positions` positions N * prod(spatial), they do
    nothing (inference, fad-test and the evaluation after training stay fp32). The open
    autocast is kept per thread: the head's levels may run the same module on two threads at
    once (SOLVER.PARALLEL_HEAD_LEVELS)."""

    def __init__(self, device_type: str, dtype: torch.dtype, min_positions: int = 0):
        self.device_type, self.dtype, self.min_positions = device_type, dtype, min_positions
        self._local = threading.local()

    def attach(self, module: nn.Module) -> None:
        """Register the hooks on `module` (the exit hook also runs when its forward raises)."""
        module.register_forward_pre_hook(self._enter)
        module.register_forward_hook(self._exit, always_call=True)

    def _enter(self, module: nn.Module, args: tuple) -> None:
        if module.training and (self.min_positions == 0
                                or args[0].numel() // args[0].shape[1] >= self.min_positions):
            self._local.active = torch.autocast(self.device_type, dtype=self.dtype)
            self._local.active.__enter__()

    def _exit(self, module: nn.Module, args: tuple, output: Any) -> Any:
        active = getattr(self._local, "active", None)
        if active is None:
            return None
        active.__exit__(None, None, None)
        self._local.active = None
        return to_float32(output)


@dataclass(frozen=True)
class AmpPolicy:
    """Autocast dtype (None: full fp32) on `device_type`, whether losses are scaled, and the
    autocast's scope: `model` (the whole forward), `backbone` or `towers` (`attach` puts those
    in place)."""

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
        """With scope `backbone`: the autocast around `model.backbone`; with `towers` also around
        each dense k x k conv of `model.head`'s towers (`ModuleAutocast`, `tower_convs`);
        otherwise nothing. A model without a `backbone` (or, for `towers`, without tower convs)
        is a ConfigError."""
        if self.dtype is None or self.scope == "model":
            return
        backbone = getattr(model, "backbone", None)
        if not isinstance(backbone, nn.Module):
            raise ConfigError(f"SOLVER.AMP_CPU_SCOPE {self.scope} needs a detector with a "
                              f"backbone; {type(model).__name__} has none: use "
                              "SOLVER.AMP_CPU_SCOPE model")
        ModuleAutocast(self.device_type, self.dtype).attach(backbone)
        if self.scope != "towers":
            return
        convs = tower_convs(model)
        if not convs:
            raise ConfigError(f"SOLVER.AMP_CPU_SCOPE towers needs a head with conv towers "
                              f"(head.*tower*); {type(model).__name__} has none: use "
                              "SOLVER.AMP_CPU_SCOPE backbone")
        for conv in convs:
            ModuleAutocast(self.device_type, self.dtype, TOWER_MIN_POSITIONS).attach(conv)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler, enabled only for fp16 (disabled it passes losses and steps through)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.scaled)


def tower_convs(model: nn.Module) -> list[nn.Conv2d]:
    """The dense k x k convolutions (groups 1, a kernel larger than 1x1) inside the submodules
    of `model.head` whose names end in `tower` (FCOS's `cls_tower` / `bbox_tower`, the FAD
    head's `box_tower` / `cls_tower`); the predictors after the towers are not among them."""
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Module):
        return []
    return [m for name, tower in head.named_children() if name.endswith("tower")
            for m in tower.modules()
            if isinstance(m, nn.Conv2d) and m.groups == 1 and math.prod(m.kernel_size) > 1]


def amp_policy(cfg: CfgNode, device: torch.device, second_order: bool = False) -> AmpPolicy:
    """Mixed precision for a training step on `device`, from `SOLVER.AMP`/`SOLVER.AMP_CPU`.

    - CUDA with SOLVER.AMP: fp16 autocast + GradScaler.
    - CPU with SOLVER.AMP and SOLVER.AMP_CPU: bf16 autocast, no scaler (bf16 keeps fp32's range),
      over the whole forward or, with SOLVER.AMP_CPU_SCOPE backbone / towers, the backbone
      (and the towers' big convs) only (the step calls `attach`; a step that does not, such as
      the search's, runs fp32 then).
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
