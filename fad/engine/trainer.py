"""The plain training loop: warm-up multistep SGD/AdamW, AMP on CUDA, grad clipping,
log line with ETA, tensorboardX scalars, atomic checkpoints and exact `--resume`."""
from __future__ import annotations

import logging
import math
import os
import random

import numpy as np
import torch
from torch import nn
from yacs.config import CfgNode

from fad.data import make_train_loader

from .checkpoint import Checkpointer, model_state
from .distributed import get_world_size, is_main_process, reduce_dict
from .hooks import collect_aux_losses, collect_log_stats
from .logger import MetricLogger, TensorboardWriter
from .solver import build_lr_scheduler, build_optimizer

logger = logging.getLogger("fad")


def rng_state() -> dict:
    """Every random generator's state, so a resumed run continues the same random streams."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def to_device(images: list, targets: list[dict], device: torch.device) -> tuple[list, list[dict]]:
    """Move a batch to `device` (non-tensor target entries stay as they are)."""
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
    return images, targets


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel under torchrun, the model itself otherwise. A model whose
    `ddp_find_unused_parameters` is True (some parameters get no gradient in a step) makes DDP
    search for them; every other model skips that search."""
    if get_world_size() == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    find_unused = bool(getattr(model, "ddp_find_unused_parameters", False))
    return nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                               find_unused_parameters=find_unused)


def train(cfg: CfgNode, model: nn.Module, dataset, device: torch.device, resume: bool = False,
          extra_state: dict | None = None) -> str:
    """Train `model` on `dataset` for `SOLVER.MAX_ITER` iterations; returns the final checkpoint.

    `extra_state` (e.g. class names, genotype text) is stored in every checkpoint.
    """
    s = cfg.SOLVER
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    amp = bool(s.AMP) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    ckpt = Checkpointer(cfg.OUTPUT_DIR)
    start_iter = 0
    last = ckpt.last() if resume else None
    if last:
        state = Checkpointer.load(last)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start_iter = state["iteration"]
        logger.info("resumed from %s at iteration %d", last, start_iter)
    elif resume:
        logger.info("--resume: no checkpoint in %s, starting from scratch", cfg.OUTPUT_DIR)
    if not last and cfg.MODEL.WEIGHT:
        model.load_state_dict(model_state(Checkpointer.load(cfg.MODEL.WEIGHT)))
        logger.info("initialised weights from %s", cfg.MODEL.WEIGHT)
    if start_iter >= s.MAX_ITER:
        logger.info("training already finished (%d/%d iterations)", start_iter, s.MAX_ITER)
        return os.path.join(cfg.OUTPUT_DIR, "model_final.pth")

    def save(name: str, next_iter: int) -> str:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                 "rng": rng_state(), "iteration": next_iter, "cfg": cfg.dump(),
                 **(extra_state or {})}
        return ckpt.save(name, state) if is_main_process() else ""

    net = wrap_ddp(model, device)
    net.train()
    meters = MetricLogger(s.MAX_ITER, start_iter)
    tb = TensorboardWriter(cfg.OUTPUT_DIR)
    logger.info("start training at iteration %d of %d", start_iter, s.MAX_ITER)
    iteration = start_iter
    for iteration, (images, targets) in enumerate(make_train_loader(cfg, dataset, start_iter), start_iter):
        images, targets = to_device(images, targets, device)
        with torch.autocast(device.type, enabled=amp):
            losses = net(images, targets)
            losses.update(collect_aux_losses(net))
        total = sum(losses.values())
        if not math.isfinite(total.item()):
            raise FloatingPointError(
                f"loss is {total.item()} at iteration {iteration}: {dict((k, v.item()) for k, v in losses.items())}; "
                "lower SOLVER.BASE_LR or raise SOLVER.WARMUP_ITERS, then --resume")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        if s.CLIP_GRAD_NORM > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), s.CLIP_GRAD_NORM)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()

        reduced = reduce_dict(losses)
        scalars = {k: v.item() for k, v in reduced.items()}
        scalars["loss"] = sum(scalars.values())
        scalars.update(collect_log_stats(net))
        meters.update(**scalars)
        meters.tick()
        if (iteration + 1) % s.LOG_PERIOD == 0 or iteration + 1 == s.MAX_ITER or iteration == start_iter:
            lr = optimizer.param_groups[0]["lr"]
            logger.info(meters.format(iteration, lr))
            tb.add_scalars({f"train/{k}": v for k, v in scalars.items()} | {"train/lr": lr}, iteration + 1)
        if (iteration + 1) % s.CHECKPOINT_PERIOD == 0 and iteration + 1 < s.MAX_ITER:
            save(f"model_{iteration + 1:07d}", iteration + 1)
    final = save("model_final", iteration + 1)
    tb.close()
    logger.info("training done: %s", final or "(rank > 0)")
    return os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
