"""The search loop: per iteration an alpha step on a val batch, then a weight step on a train batch.

Weights: SGD (warm-up multistep, grad clip SOLVER.CLIP_GRAD_NORM) on the train half; alphas:
Adam (architect) on the disjoint val half. Under torchrun every gradient (weights and alphas) is
averaged over ranks, so weights and alphas stay identical everywhere. Every CHECKPOINT_PERIOD and
at the end: an atomic checkpoint (weights + alphas, both optimizer states, scheduler, RNG,
iteration) and, on the main rank, OUTPUT_DIR/genotype.log plus genotype_{box,cls}.gv diagrams.
"""
from __future__ import annotations

import logging
import math
import os

import torch
from torch import Tensor, nn
from yacs.config import CfgNode

from fad.data import build_dataset, check_num_classes, make_train_loader, split_dataset
from fad.engine.checkpoint import Checkpointer
from fad.engine.distributed import (all_reduce_mean, broadcast_tensors, get_world_size,
                                    is_main_process, reduce_dict)
from fad.engine.hooks import collect_aux_losses
from fad.engine.logger import MetricLogger, TensorboardWriter
from fad.engine.solver import build_lr_scheduler, build_optimizer
from fad.engine.trainer import rng_state, set_rng_state, to_device
from fad.errors import ConfigError
from fad.nas.draw import FORMATS, draw_genotype
from fad.nas.genotype import Genotype, format_genotype, write_genotype_file

from .architect import Architect
from .derive import derive_genotype, none_dominated_edges, softmax_alpha_scalars
from .supernet import TOWERS, Supernet, build_supernet

logger = logging.getLogger("fad")
GENOTYPE_FILE = "genotype.log"


@torch.no_grad()
def mean_over_ranks(tensors: list[Tensor]) -> None:
    """Average `tensors` over ranks in place (one flat all-reduce); no-op on one process."""
    if get_world_size() == 1 or not tensors:
        return
    flat = all_reduce_mean(torch.cat([t.reshape(-1) for t in tensors]))
    offset = 0
    for t in tensors:
        t.copy_(flat[offset: offset + t.numel()].view_as(t))
        offset += t.numel()


def forward_losses(model: nn.Module, batch: tuple[list, list[dict]], amp: bool) -> dict[str, Tensor]:
    """The detector's loss dict (+ auxiliary losses) for one batch, under bf16 autocast if `amp`."""
    images, targets = batch
    device_type = images[0].device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
        losses = model(images, targets)
        losses.update(collect_aux_losses(model))
    return losses


def search_step(model: Supernet, architect: Architect, optimizer: torch.optim.Optimizer,
                train_batch: tuple[list, list[dict]], val_batch: tuple[list, list[dict]],
                clip_norm: float, amp: bool) -> tuple[dict[str, Tensor], float]:
    """One search iteration: alpha step on `val_batch`, then SGD step of the weights on
    `train_batch` (grads averaged over ranks, clipped to `clip_norm` when > 0).
    Returns the train loss dict (detached) and the val loss."""
    val_loss = architect.step(val_batch, train_batch, optimizer)
    weights = architect.weights
    losses = forward_losses(model, train_batch, amp)
    total = sum(losses.values())
    if not (math.isfinite(total.item()) and math.isfinite(val_loss)):
        raise FloatingPointError(
            f"search loss is {total.item()} (val {val_loss}); lower SOLVER.BASE_LR or "
            "SEARCH.ARCH_LR, or raise SOLVER.WARMUP_ITERS, then --resume")
    optimizer.zero_grad(set_to_none=True)
    total.backward(inputs=weights)
    for p in weights:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    mean_over_ranks([p.grad for p in weights])
    if clip_norm > 0:
        nn.utils.clip_grad_norm_(weights, clip_norm)
    optimizer.step()
    return {k: v.detach() for k, v in losses.items()}, val_loss


def derive_and_write(model: Supernet, output_dir: str, iteration: int, fmt: str
                     ) -> tuple[Genotype, Genotype]:
    """Derive both genotypes; on the main rank write genotype.log and the diagrams atomically."""
    alphas = model.tower_alphas()
    box, cls = (derive_genotype(alphas[t]) for t in TOWERS)
    if is_main_process():
        write_genotype_file(os.path.join(output_dir, GENOTYPE_FILE), box, cls)
        for tower, genotype in zip(TOWERS, (box, cls)):
            draw_genotype(genotype, os.path.join(output_dir, f"genotype_{tower}"),
                          f"{tower} tower, iteration {iteration}", fmt)
        logger.info("iteration %d genotypes (%s):\n  box: %s\n  cls: %s", iteration,
                    os.path.join(output_dir, GENOTYPE_FILE), format_genotype(box),
                    format_genotype(cls))
    return box, cls


def log_collapse(model: Supernet, iteration: int) -> None:
    """Report edges whose strongest weight is `none` (the derivation still skips `none`); a
    warning once `none` holds more than half of an edge's weight."""
    for tower, alphas in model.tower_alphas().items():
        edges = none_dominated_edges(alphas)
        if edges:
            total = sum(a.shape[0] for a in alphas)
            detail = ", ".join(f"node{i}<-{j} ({w:.3f})" for i, j, w in edges)
            level = logging.WARNING if max(w for _, _, w in edges) > 0.5 else logging.INFO
            logger.log(level, "collapse watch: 'none' is the top op of %d/%d %s-tower edges at "
                       "iteration %d: %s", len(edges), total, tower, iteration, detail)


def search(cfg: CfgNode, model: Supernet, train_set, val_set, device: torch.device,
           resume: bool = False, extra_state: dict | None = None) -> tuple[Genotype, Genotype]:
    """Run (or resume) the bilevel search; returns the final (box, cls) genotypes."""
    s, out = cfg.SOLVER, cfg.OUTPUT_DIR
    fmt = cfg.SEARCH.DIAGRAM_FORMAT
    if fmt not in FORMATS:
        raise ConfigError(f"SEARCH.DIAGRAM_FORMAT must be one of {FORMATS}, got {fmt!r}")
    weights = model.weight_parameters()
    alphas = model.arch_parameters()
    optimizer = build_optimizer(cfg, model.weight_named_parameters())
    scheduler = build_lr_scheduler(cfg, optimizer)
    amp = bool(s.AMP) and device.type == "cuda" and not cfg.SEARCH.SECOND_ORDER
    architect = Architect(lambda batch: sum(forward_losses(model, batch, amp).values()),
                          weights, alphas, lr=cfg.SEARCH.ARCH_LR, betas=cfg.SEARCH.ARCH_BETAS,
                          weight_decay=cfg.SEARCH.ARCH_WEIGHT_DECAY,
                          second_order=cfg.SEARCH.SECOND_ORDER, reduce=mean_over_ranks)
    ckpt = Checkpointer(out)
    start_iter = 0
    last = ckpt.last() if resume else None
    if last:
        state = Checkpointer.load(last)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        architect.optimizer.load_state_dict(state["arch_optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start_iter = state["iteration"]
        logger.info("resumed search from %s at iteration %d", last, start_iter)
    elif resume:
        logger.info("--resume: no checkpoint in %s, starting the search from scratch", out)
    broadcast_tensors([p.data for p in model.parameters()] + list(model.buffers()))
    if start_iter >= s.MAX_ITER:
        logger.info("search already finished (%d/%d iterations)", start_iter, s.MAX_ITER)
        return derive_and_write(model, out, start_iter, fmt)

    def save(name: str, next_iter: int) -> None:
        if is_main_process():
            ckpt.save(name, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "arch_optimizer": architect.optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "rng": rng_state(),
                             "iteration": next_iter, "cfg": cfg.dump(), **(extra_state or {})})

    model.train()
    meters = MetricLogger(s.MAX_ITER, start_iter)
    tb = TensorboardWriter(out)
    train_loader = make_train_loader(cfg, train_set, start_iter)
    val_loader = make_train_loader(cfg, val_set, start_iter)
    logger.info("search: iterations %d..%d, %d train / %d val images, %s alpha steps",
                start_iter, s.MAX_ITER, len(train_set), len(val_set),
                "second-order" if cfg.SEARCH.SECOND_ORDER else "first-order")
    iteration = start_iter
    for iteration, (train_batch, val_batch) in enumerate(zip(train_loader, val_loader), start_iter):
        train_batch, val_batch = to_device(*train_batch, device), to_device(*val_batch, device)
        try:
            losses, val_loss = search_step(model, architect, optimizer, train_batch, val_batch,
                                           s.CLIP_GRAD_NORM, amp)
        except FloatingPointError as exc:
            raise FloatingPointError(f"iteration {iteration}: {exc}") from None
        scheduler.step()

        scalars = {k: v.item() for k, v in reduce_dict(losses).items()}
        scalars["loss"] = sum(scalars.values())
        scalars["val_loss"] = float(all_reduce_mean(torch.tensor(val_loss)))
        meters.update(**scalars)
        meters.tick()
        done = iteration + 1
        if done % s.LOG_PERIOD == 0 or done == s.MAX_ITER or iteration == start_iter:
            lr = optimizer.param_groups[0]["lr"]
            logger.info(meters.format(iteration, lr))
            alpha_scalars = {}
            for tower, tower_alphas in model.tower_alphas().items():
                alpha_scalars.update(softmax_alpha_scalars(tower, tower_alphas))
            tb.add_scalars({f"search/{k}": v for k, v in scalars.items()}
                           | {"search/lr": lr} | alpha_scalars, done)
        if done % s.CHECKPOINT_PERIOD == 0 and done < s.MAX_ITER:
            save(f"model_{done:07d}", done)
            derive_and_write(model, out, done, fmt)
            log_collapse(model, done)
    save("model_final", iteration + 1)
    genotypes = derive_and_write(model, out, iteration + 1, fmt)
    log_collapse(model, iteration + 1)
    tb.close()
    return genotypes


def run_search(cfg: CfgNode, device: torch.device, resume: bool = False) -> tuple[Genotype, Genotype]:
    """Build the search set, split it into disjoint train/val halves, build the supernet, search."""
    dataset = build_dataset(cfg, cfg.DATASETS.TRAIN, is_train=True)
    num_classes = check_num_classes(cfg, dataset)
    train_set, val_set = split_dataset(dataset, cfg.SEARCH.VAL_FRACTION, cfg.SEED)
    logger.info("search set %s: %d images, %d classes -> %d train / %d val", cfg.DATASETS.TRAIN,
                len(dataset), num_classes, len(train_set), len(val_set))
    model = build_supernet(cfg, num_classes).to(device)
    return search(cfg, model, train_set, val_set, device, resume,
                  extra_state={"classes": list(dataset.classes)})
