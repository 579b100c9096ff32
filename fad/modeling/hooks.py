"""`ModelHooks`: everything a model (or any of its submodules) may tell the training engine.

A module opts in by listing `ModelHooks` among its bases (a plain base class, not a protocol:
a module with the same members but not the base is not asked) and overriding what it needs; the
defaults below are what the engine assumes for every other module. The engine
(`fad.engine.hooks`, `fad.engine.solver`, `fad.engine.trainer.wrap_ddp`) checks
`isinstance(module, ModelHooks)` and calls these members; nothing else is probed by name.
`fad.engine.hooks` finds the hooked submodules of a model once and keeps the list, so the
module tree must be complete before training starts.
"""
from __future__ import annotations

from torch import Tensor
from yacs.config import CfgNode


class ModelHooks:
    """Optional training hooks of a module (see the module docstring)."""

    ddp_find_unused_parameters: bool = False
    """True when a training step can leave some parameters without a gradient; DDP then searches
    for them every step (slower), so set it only where it happens (top-level model only)."""

    def aux_losses(self) -> dict[str, Tensor]:
        """Losses of the last training forward that the module's output does not carry (e.g.
        SparseResNet's sparsity loss); the engine adds them to the detector's loss dict.
        Collected from every submodule; {} when there are none."""
        return {}

    def log_stats(self) -> dict[str, float]:
        """Values to log, not to optimise (mask densities, Sparse DETR's DAM coverage ...).
        Collected from every submodule after each step and by the test tool; {} by default."""
        return {}

    def set_progress(self, iteration: int, epoch: int) -> None:
        """Told by the trainer before every training step: the 0-based `iteration` about to run
        and the 0-based `epoch` its images come from (iteration * SOLVER.IMS_PER_BATCH // the
        training set size); for schedules inside a model (ASAG's ground-truth patches and
        denoising noise). Called on every submodule; nothing by default."""

    def optimizer_param_groups(self, cfg: CfgNode) -> list[dict] | None:
        """Optimizer parameter groups (`params`, optionally `lr`, `weight_decay`) of the whole
        model, read from the top-level model only; None (the default) keeps the solver's two
        groups (weights; biases at SOLVER.BIAS_LR_FACTOR x lr and SOLVER.WEIGHT_DECAY_BIAS)."""
        return None
