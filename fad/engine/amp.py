"""The one mixed-precision policy of every training loop (detector training and the search)."""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from yacs.config import CfgNode


@dataclass(frozen=True)
class AmpPolicy:
    """Autocast dtype (None: full fp32) on `device_type`, and whether losses are scaled."""

    device_type: str
    dtype: torch.dtype | None

    @property
    def scaled(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range."""
        return self.dtype == torch.float16

    def autocast(self) -> AbstractContextManager:
        """The autocast context of a forward pass (a no-op context when the policy is fp32)."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler, enabled only for fp16 (disabled it passes losses and steps through)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.scaled)


def amp_policy(cfg: CfgNode, device: torch.device, second_order: bool = False) -> AmpPolicy:
    """Mixed precision for a training step on `device`, from `SOLVER.AMP`/`SOLVER.AMP_CPU`.

    - CUDA with SOLVER.AMP: fp16 autocast + GradScaler.
    - CPU with SOLVER.AMP and SOLVER.AMP_CPU: bf16 autocast, no scaler (bf16 keeps fp32's range).
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
    return AmpPolicy(device.type, torch.bfloat16 if s.AMP_CPU else None)
