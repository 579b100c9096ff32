"""The one training loop: `Trainer` runs a `TrainStep` once per iteration.

The trainer owns what every run needs: resume from `last_checkpoint` (model, optimizers,
GradScaler, scheduler, RNG, iteration, extra state), periodic and final atomic checkpoints, the
log line with ETA and tensorboardX scalars, the NaN guard, ranks that start identical, the
retention of SOLVER.CHECKPOINT_KEEP periodic checkpoints, and the clean stop on Ctrl-C/SIGTERM
(a checkpoint, then `Interrupted`; `fad.engine.interrupt`). A step owns one iteration's work:
`DetectorStep` below (DDP-wrapped detector, one optimizer) or the search stage's alpha + weight
step. `HookBase` subclasses add work after iterations and checkpoints (the search writes its
genotypes there). Mixed precision: `fad.engine.amp`.
"""
from __future__ import annotations

import logging
import math
import os
import random
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn
from yacs.config import CfgNode

from fad.data import make_train_loader
from fad.errors import ConfigError, DataError
from fad.modeling.backbone.fold_frozen_bn import fold_frozen_batch_norms
from fad.modeling.fcos.mosaic import enable_mosaic_levels
from fad.modeling.fcos.parallel_levels import enable_parallel_levels
from fad.modeling.hooks import ModelHooks
from fad.ops.conv_wgrad import use_fast_weight_grad
from fad.ops.gn_relu import fuse_group_norm_relu

from .amp import AmpPolicy, amp_policy
from .checkpoint import Checkpointer, load_model_weights
from .distributed import (
    broadcast_tensors,
    get_world_size,
    is_main_process,
    max_over_ranks,
    reduce_dict,
)
from .hooks import collect_aux_losses, collect_log_stats, set_progress
from .interrupt import Interrupted, StopRequest
from .logger import MetricLogger, TensorboardWriter
from .mismatch import Builder
from .solver import build_lr_scheduler, build_optimizer
from .threads import recheck_threads

logger = logging.getLogger("fad")


def rng_state() -> dict:
    """Every random generator's state, so a resumed run continues the same random streams.
    Only tuples, numbers and tensors (numpy's key array as an int64 tensor): a checkpoint loads
    with the weights-only unpickler."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the generators saved by `rng_state`."""
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    keys = keys.numpy() if torch.is_tensor(keys) else keys  # a numpy array before tensors
    np.random.set_state((name, keys.astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def to_device(images: list, targets: list[dict], device: torch.device
              ) -> tuple[list, list[dict]]:
    """Move a batch to `device` (non-tensor target entries stay as they are)."""
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()}
               for t in targets]
    return images, targets


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel under torchrun, the model itself otherwise. DDP searches for
    parameters without a gradient only when the model's `ddp_find_unused_parameters` says so."""
    if get_world_size() == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    find_unused = isinstance(model, ModelHooks) and model.ddp_find_unused_parameters
    return nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                               find_unused_parameters=find_unused)


def maybe_compile(cfg: CfgNode, module: nn.Module) -> nn.Module:
    """`torch.compile(module)` with SOLVER.COMPILE (it breaks its graphs at the host syncs named
    in docs/ops.md), else `module`. The step keeps the plain module as `model`: checkpoints save
    its state dict, with the key names of an uncompiled run."""
    return torch.compile(module) if cfg.SOLVER.COMPILE else module


def forward_losses(model: nn.Module, images: list[Tensor], targets: list[dict],
                   amp: AmpPolicy) -> dict[str, Tensor]:
    """The detector's loss dict plus every submodule's `aux_losses()`, under `amp`'s autocast."""
    with amp.autocast():
        losses = model(images, targets)
        losses.update(collect_aux_losses(model))
    return losses


@dataclass
class StepOutput:
    """One step's report: `losses` (summed into the logged `loss`) and other `scalars` (e.g. the
    search's val loss); detached tensors, averaged over ranks by the trainer."""

    losses: dict[str, Tensor]
    scalars: dict[str, Tensor] = field(default_factory=dict)


class TrainStep(ABC):
    """One iteration's work: owns the model, its (weight) optimizer and the GradScaler.

    `fix` is the advice the NaN guard gives when this step's loss stops being finite.
    """

    fix = "lower SOLVER.BASE_LR or raise SOLVER.WARMUP_ITERS, then --resume"

    def __init__(self, cfg: CfgNode, model: nn.Module, optimizer: torch.optim.Optimizer,
                 amp: AmpPolicy, device: torch.device):
        self.model, self.optimizer, self.amp, self.device = model, optimizer, amp, device
        self.scaler = amp.grad_scaler()
        self.clip_norm = cfg.SOLVER.CLIP_GRAD_NORM

    @abstractmethod
    def run(self, batch: Any) -> StepOutput:
        """Forward, backward and optimizer step(s) on one batch of the trainer's loader."""

    def apply_gradients(self, params: list[nn.Parameter]) -> None:
        """Unscale (fp16), clip `params` to SOLVER.CLIP_GRAD_NORM when > 0, optimizer step,
        scaler update (the scaler skips the step when an fp16 gradient overflowed)."""
        if self.clip_norm > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(params, self.clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def state_dict(self) -> dict:
        """Checkpoint entries of the step besides the model (optimizer and scaler states)."""
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` saved (`state` is the whole checkpoint)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])


def prepare_layers(cfg: CfgNode, model: nn.Module) -> None:
    """The layer changes `DetectorStep` makes before training, in place (the state dict keeps
    its keys and values): with SOLVER.CHANNELS_LAST the 4-D weights channels-last (NHWC) and
    each GroupNorm + ReLU pair one `GroupNormReLU`; each FrozenBatchNorm2d folded into the
    convolution before it (`fold_frozen_batch_norms`); every groups-1, zero-padded
    `nn.Conv2d` a `WgradConv2d`, whose weight gradient runs as GEMMs or the direct kernel
    where MODEL.OPS.CONV_WGRAD_BACKEND says so (`fad.ops.conv_wgrad`)."""
    if cfg.SOLVER.CHANNELS_LAST:
        model.to(memory_format=torch.channels_last)  # 4-D weights; activations follow
        fuse_group_norm_relu(model)  # NHWC GroupNorm + ReLU pairs: one CPU kernel each
    fold_frozen_batch_norms(model)
    use_fast_weight_grad(model)


class DetectorStep(TrainStep):
    """Detector training: the loss dict (+ aux losses) of the DDP-wrapped model, one backward,
    one step of the optimizer from `build_optimizer` (gradients averaged over ranks by DDP).
    With SOLVER.CHANNELS_LAST the model's 4-D weights are made channels-last (NHWC) in place,
    so the convolutions run and return NHWC (oneDNN on the CPU, tensor cores on a GPU), and
    each GroupNorm + ReLU pair becomes one `GroupNormReLU` (`fad.ops.gn_relu`: one compiled pass
    on an NHWC CPU float map, else the same two ops; the state dict keeps its keys); each
    FrozenBatchNorm2d is folded into the convolution before it, and the convolutions take their
    weight gradient from GEMMs or the direct kernel where that pays (`prepare_layers`).
    The AMP policy's autocast wraps the forward, or only the backbone (`AmpPolicy.attach`).
    With SOLVER.PARALLEL_HEAD_LEVELS an FCOS head's P3 and P4-P7 run on two CPU threads
    (`fad.modeling.fcos.parallel_levels`); with SOLVER.MOSAIC_HEAD_LEVELS its levels run packed
    in one map instead (`fad.modeling.fcos.mosaic`)."""

    def __init__(self, cfg: CfgNode, model: nn.Module, device: torch.device):
        prepare_layers(cfg, model)
        super().__init__(cfg, model, build_optimizer(cfg, model), amp_policy(cfg, device), device)
        self.amp.attach(model)  # SOLVER.AMP_CPU_SCOPE backbone|towers: bf16 in parts only
        if cfg.SOLVER.PARALLEL_HEAD_LEVELS:
            enable_parallel_levels(model, get_world_size())
        if cfg.SOLVER.MOSAIC_HEAD_LEVELS:
            if not cfg.SOLVER.CHANNELS_LAST:
                raise ConfigError("SOLVER.MOSAIC_HEAD_LEVELS needs SOLVER.CHANNELS_LAST True "
                                  "(its GroupNorm + ReLU layers fused); set one or the other")
            enable_mosaic_levels(model)
        self.net = maybe_compile(cfg, wrap_ddp(model, device))

    def run(self, batch: tuple[list, list[dict]]) -> StepOutput:
        images, targets = to_device(*batch, self.device)
        losses = forward_losses(self.net, images, targets, self.amp)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(sum(losses.values())).backward()
        self.apply_gradients(list(self.model.parameters()))
        return StepOutput({k: v.detach() for k, v in losses.items()})


class HookBase:
    """Extra work around the loop; override what you need. A hook sees the trainer: `iter`
    (finished iterations), `log_now`, `tb`, `step.model`."""

    def after_step(self, trainer: Trainer) -> None:
        """After every iteration and its log line."""

    def after_checkpoint(self, trainer: Trainer) -> None:
        """After each periodic checkpoint and the final one, on every rank."""


class Trainer:
    """Runs `step` over `make_loader(start_iter)` up to SOLVER.MAX_ITER.

    `make_loader(start_iter)` yields the batches of iterations start_iter..MAX_ITER-1 (exactly
    those of an uninterrupted run). `epoch_size` (images per epoch; 0 = unknown, epoch 0) gives
    the epoch that `ModelHooks.set_progress` reports before each step. Scalars go to
    tensorboard under `prefix/`. Between two iterations everything happens in
    `_after_iteration`; every checkpoint is written by `save_checkpoint`. `build(cfg)` makes the
    step's model from a config (default: the detector of MODEL.META_ARCHITECTURE); a checkpoint
    that does not fit is explained with it (`fad.engine.mismatch`).
    """

    def __init__(self, cfg: CfgNode, step: TrainStep, make_loader: Callable[[int], Iterable],
                 hooks: Sequence[HookBase] = (), extra_state: dict | None = None,
                 prefix: str = "train", epoch_size: int = 0, build: Builder | None = None):
        self.cfg, self.step, self.make_loader, self.build = cfg, step, make_loader, build
        self.epoch_size = epoch_size
        self.hooks, self.extra_state, self.prefix = list(hooks), extra_state or {}, prefix
        self.scheduler = build_lr_scheduler(cfg, step.optimizer)
        self.checkpointer = Checkpointer(cfg.OUTPUT_DIR)
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.iter = 0
        self.log_now = False
        self.tb: TensorboardWriter | None = None
        self.stop = StopRequest()

    def resume_or_load(self, resume: bool) -> None:
        """Continue from the newest intact checkpoint (`Checkpointer.last`: the one
        `last_checkpoint` names unless it is damaged) when `resume` and there is one, removing
        the temporary files of a killed checkpoint write; otherwise start from MODEL.WEIGHT when
        set. Then every rank takes rank 0's parameters and buffers."""
        model, out = self.step.model, self.cfg.OUTPUT_DIR
        last = self.checkpointer.last() if resume else None
        if resume and is_main_process():
            left = self.checkpointer.remove_leftovers()
            if left:
                logger.info("removed %d temporary file(s) of a checkpoint write that was "
                            "killed: %s", len(left), ", ".join(map(os.path.basename, left)))
        fit = {"cfg": self.cfg, "classes": self.extra_state.get("classes"),
               "genotype": self.cfg.MODEL.FAD.GENOTYPE, "build": self.build}
        if last:
            state = Checkpointer.load(last, checked=True)  # last() hashed it
            load_model_weights(model, state, last, **fit)
            self.step.load_state_dict(state)
            self.scheduler.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"])
            self.iter = state["iteration"]
            logger.info("resumed from %s at iteration %d", last, self.iter)
        else:
            if resume:
                logger.info("--resume: no checkpoint in %s, starting from scratch", out)
            weight = self.cfg.MODEL.WEIGHT
            if weight:
                load_model_weights(model, Checkpointer.load(weight), weight, **fit)
                logger.info("initialised weights from %s", weight)
        broadcast_tensors([p.data for p in model.parameters()] + list(model.buffers()))

    def train(self) -> None:
        """Run the remaining iterations, then write `model_final`. On Ctrl-C/SIGTERM: finish the
        iteration, write its checkpoint and raise `Interrupted` (a second signal exits at once).
        A `DataError` from the loader (a bad file) writes the checkpoint of the last finished
        iteration, then goes on up.
        """
        if self.iter >= self.max_iter:
            logger.info("%s already finished (%d/%d iterations)", self.prefix, self.iter,
                        self.max_iter)
            return
        start = self.iter
        self.step.model.train()
        meters = MetricLogger(self.max_iter)
        self.tb = TensorboardWriter(self.cfg.OUTPUT_DIR)
        logger.info("start %s at iteration %d of %d (log lines: mean since the previous line "
                    "(median of the last %d iterations); ETA at the last interval's speed)",
                    self.prefix, start, self.max_iter, meters.window)
        try:
            with self.stop:
                for batch in self.make_loader(start):
                    epoch = (self.iter * self.cfg.SOLVER.IMS_PER_BATCH // self.epoch_size
                             if self.epoch_size else 0)
                    set_progress(self.step.model, self.iter, epoch)
                    reduced = self._reduce(self.step.run(batch))
                    self.scheduler.step()
                    self.iter += 1
                    self._log(reduced, meters, first=self.iter == start + 1)
                    self._after_iteration()
                self.save_checkpoint("model_final")
                self._stop_if_requested(checkpoint=False)
        except DataError:
            self._checkpoint_on_data_error(start)
            raise
        finally:
            self.tb.close()

    def _checkpoint_on_data_error(self, start: int) -> None:
        """A file that fails mid-run (e.g. damaged after the image check): keep the iterations
        since the last checkpoint, so the run continues with --resume once the file is fixed."""
        if self.iter > start and self.iter % self.cfg.SOLVER.CHECKPOINT_PERIOD:
            self.save_checkpoint(f"model_{self.iter:07d}")
        if self.iter == 0:
            logger.error("bad data before the first iteration; fix the file named below")
            return
        logger.error("bad data after iteration %d; its checkpoint is in %s: fix the file named "
                     "below and continue with --resume", self.iter, self.cfg.OUTPUT_DIR)

    def _reduce(self, out: StepOutput) -> dict[str, float]:
        """Step scalars averaged over ranks, with the summed `loss`; the NaN guard (every rank
        sees the same averages, so all ranks stop together). One copy to the host per
        iteration, of all the scalars stacked."""
        values = reduce_dict(out.losses | out.scalars)
        stacked = torch.stack([v.reshape(()) for v in values.values()])
        # the NaN guard stops before a non-finite step reaches a checkpoint; the meters log it
        reduced = dict(zip(values, stacked.tolist()))  # host sync: NaN guard, once a step
        loss = sum(reduced[k] for k in out.losses)
        if not all(math.isfinite(v) for v in [loss, *reduced.values()]):
            raise FloatingPointError(
                f"loss is {loss} at iteration {self.iter + 1}/{self.max_iter} ({reduced}); "
                f"{self.step.fix}")
        return reduced | {"loss": loss}

    def _log(self, scalars: dict[str, float], meters: MetricLogger, first: bool) -> None:
        """Meters every iteration; the log line and tensorboard every SOLVER.LOG_PERIOD, at the
        first and at the last iteration, each line followed by the re-check of the threads
        (`fad.engine.threads`: a line when it switches)."""
        scalars = scalars | collect_log_stats(self.step.model)
        meters.update(**scalars)
        meters.tick()
        self.log_now = first or self.iter % self.cfg.SOLVER.LOG_PERIOD == 0 or (
            self.iter == self.max_iter)
        if self.log_now:
            lr = self.step.optimizer.param_groups[0]["lr"]
            logger.info(meters.format(self.iter - 1, lr))
            switch = recheck_threads()
            if switch:
                logger.info("threads after iteration %d: %s", self.iter, switch)
            self.tb.add_scalars({f"{self.prefix}/{k}": v for k, v in scalars.items()}
                                | {f"{self.prefix}/lr": lr}, self.iter)

    def _after_iteration(self) -> None:
        """Hooks, then the periodic checkpoint (the final one is written after the loop), then
        the stop on a signal."""
        for hook in self.hooks:
            hook.after_step(self)
        periodic = self.iter % self.cfg.SOLVER.CHECKPOINT_PERIOD == 0
        if periodic and self.iter < self.max_iter:
            self.save_checkpoint(f"model_{self.iter:07d}")
        if self.iter < self.max_iter:
            self._stop_if_requested(checkpoint=not periodic)

    def _stop_if_requested(self, checkpoint: bool) -> None:
        """When any rank got SIGINT/SIGTERM (the flag is reduced over ranks every iteration, so
        all stop at the same one): the checkpoint of this iteration unless `checkpoint` is False
        (already written), the log line, and `Interrupted`."""
        signum = max_over_ranks(self.stop.signum, self.step.device)
        if not signum:
            return
        if checkpoint:
            self.save_checkpoint(f"model_{self.iter:07d}")
        logger.warning("interrupted at iteration %d; continue with --resume", self.iter)
        raise Interrupted(signum, self.iter)

    def save_checkpoint(self, name: str) -> None:
        """`OUTPUT_DIR/<name>.pth` on the main rank, atomically: all that a resume needs plus
        `extra_state`; older periodic ones beyond SOLVER.CHECKPOINT_KEEP are deleted. Then every
        hook's `after_checkpoint` on every rank."""
        if is_main_process():
            self.checkpointer.save(name, {
                "model": self.step.model.state_dict(), **self.step.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": rng_state(),
                "iteration": self.iter, "cfg": self.cfg.dump(), **self.extra_state})
            self.checkpointer.prune(self.cfg.SOLVER.CHECKPOINT_KEEP)
        for hook in self.hooks:
            hook.after_checkpoint(self)


def train(cfg: CfgNode, model: nn.Module, dataset, device: torch.device, resume: bool = False,
          extra_state: dict | None = None) -> str:
    """Train `model` on `dataset` for SOLVER.MAX_ITER iterations; returns the final checkpoint.

    `extra_state` (e.g. class names) is stored in every checkpoint, beside the config.
    """
    trainer = Trainer(cfg, DetectorStep(cfg, model, device),
                      lambda start: make_train_loader(cfg, dataset, start),
                      extra_state=extra_state, epoch_size=len(dataset))
    trainer.resume_or_load(resume)
    trainer.train()
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    logger.info("training done: %s", final)
    return final
