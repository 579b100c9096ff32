"""Optimizers (SGD with bias rules, AdamW, or model-defined groups) and warm-up multistep LR."""
from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable

import torch
from torch import nn
from yacs.config import CfgNode

from fad.errors import ConfigError
from fad.modeling.hooks import ModelHooks


def _default_groups(cfg: CfgNode, named: Iterable[tuple[str, nn.Parameter]]) -> list[dict]:
    """Two groups: weights, and biases (BIAS_LR_FACTOR x lr, WEIGHT_DECAY_BIAS)."""
    s = cfg.SOLVER
    weights, biases = [], []
    for name, p in named:
        if p.requires_grad:
            (biases if name.split(".")[-1] == "bias" else weights).append(p)
    groups = [{"params": weights, "lr": s.BASE_LR, "weight_decay": s.WEIGHT_DECAY},
              {"params": biases, "lr": s.BASE_LR * s.BIAS_LR_FACTOR,
               "weight_decay": s.WEIGHT_DECAY_BIAS}]
    return [g for g in groups if g["params"]]


def build_optimizer(cfg: CfgNode, model_or_named) -> torch.optim.Optimizer:
    """Optimizer of `SOLVER.OPTIMIZER`.

    `model_or_named` is the bare model (its `ModelHooks.optimizer_param_groups(cfg)` when it
    returns groups) or an iterable of (name, parameter) pairs (e.g. a supernet's weights).
    """
    named = model_or_named
    groups = None
    if isinstance(model_or_named, nn.Module):
        named = model_or_named.named_parameters()
        if isinstance(model_or_named, ModelHooks):
            groups = model_or_named.optimizer_param_groups(cfg)
    if groups is None:
        groups = _default_groups(cfg, named)
    s = cfg.SOLVER
    for g in groups:
        g.setdefault("lr", s.BASE_LR)
        g["initial_lr"] = g["lr"]
    fused = _fused_kernel_fits(groups)
    if s.OPTIMIZER == "SGD":
        return torch.optim.SGD(groups, lr=s.BASE_LR, momentum=s.MOMENTUM,
                               weight_decay=s.WEIGHT_DECAY, fused=fused)
    if s.OPTIMIZER == "AdamW":
        return torch.optim.AdamW(groups, lr=s.BASE_LR, weight_decay=s.WEIGHT_DECAY, fused=fused)
    raise ConfigError(f"SOLVER.OPTIMIZER must be SGD or AdamW, got {s.OPTIMIZER!r}")


def _fused_kernel_fits(groups: list[dict]) -> bool:
    """Whether torch's fused optimizer kernel (one update over all tensors of a group) serves
    these parameters: floating point, on the CPU or CUDA. It computes the for-loop's update up
    to float rounding (the search's weights ~1e-11 apart after one step) in a fraction of its
    time: the demo's 435 tensors, 9.3 ms against 18.5 ms a step (docs/BENCHMARKS.md)."""
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda")
               for g in groups for p in g["params"])


def lr_factor(iteration: int, steps: tuple[int, ...], gamma: float, warmup_factor: float,
              warmup_iters: int) -> float:
    """Linear warm-up from `warmup_factor` to 1 over `warmup_iters`, times gamma^(steps passed)."""
    factor = gamma ** bisect_right(sorted(steps), iteration)
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor *= warmup_factor * (1 - alpha) + alpha
    return factor


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer
                       ) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration warm-up multistep schedule (call `.step()` once per iteration)."""
    s = cfg.SOLVER
    steps = tuple(s.STEPS)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(it, steps, s.GAMMA, s.WARMUP_FACTOR, s.WARMUP_ITERS))
