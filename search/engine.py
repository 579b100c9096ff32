"""The search stage on the shared loop (`fad.engine.trainer.Trainer`): `SearchStep` does an alpha
step on a val batch, then a weight step on a train batch; `GenotypeHook` writes the genotypes.

Weights: SGD (warm-up multistep, grad clip SOLVER.CLIP_GRAD_NORM) on the train half; alphas:
Adam (architect) on the disjoint val half. Under torchrun every gradient (weights and alphas) is
averaged over ranks, so weights and alphas stay identical everywhere (no DDP wrapper: the
architect takes gradients with `torch.autograd.grad`). Every CHECKPOINT_PERIOD and at the end:
the trainer's atomic checkpoint (weights + alphas, both optimizer states, scaler, scheduler, RNG,
iteration) and, on the main rank, OUTPUT_DIR/genotype.log plus genotype_{box,cls} diagrams
and the pictures of `visuals.py` (alphas.png, winning_ops.png, genotype_history.log).
Cost (`cost.py`): the expected head cost is logged with the losses (`head_gflops`, or `head_ms`
with MODEL.FAD.COST latency); unless MODEL.FAD.COST is none its penalty joins the alpha
objective; genotype_cost.json is written beside genotype.log at every checkpoint.
"""
from __future__ import annotations

import logging
import os

import torch
from torch import Tensor
from yacs.config import CfgNode

from fad.config import get_cfg_defaults
from fad.data import build_dataset, make_train_loader, split_dataset
from fad.engine.amp import amp_policy
from fad.engine.distributed import all_reduce_mean, get_world_size, is_main_process
from fad.engine.solver import build_optimizer
from fad.engine.trainer import (
    HookBase,
    StepOutput,
    Trainer,
    TrainStep,
    forward_losses,
    maybe_compile,
    to_device,
)
from fad.errors import ConfigError
from fad.modeling.fcos.parallel_levels import enable_parallel_levels
from fad.nas.draw import draw_genotype
from fad.nas.genotype import Genotype, format_genotype, write_genotype_file

from .architect import Architect, frozen
from .cost import CostHook, SearchCost
from .derive import derive_genotype, none_dominated_edges, softmax_alpha_scalars
from .supernet import TOWERS, Supernet, build_supernet
from .visuals import write_search_visuals

logger = logging.getLogger("fad")
GENOTYPE_FILE = "genotype.log"
COLLAPSE_LEAD = 1.1  # collapse watch: `none` at >= 1.1x the best other op of its edge
Batch = tuple[list, list[dict]]


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


# SOLVER.PARALLEL_HEAD_LEVELS in the search's forwards (alpha and weight step): the first
# levels on the calling thread, the others on the worker (the supernet's small maps cost about
# the same per level).
SEARCH_FIRST_LEVELS = 2


class SearchStep(TrainStep):
    """One search iteration on a (train batch, val batch) pair: the architect's alpha step on
    the val batch (first or second order), then an SGD step of the weights on the train batch
    (grads averaged over ranks, clipped; its forward records no alpha gradients). With
    SOLVER.PARALLEL_HEAD_LEVELS the head runs its first `SEARCH_FIRST_LEVELS` levels and the
    others on two threads in both steps. The val loss is reported as `val_loss`."""

    fix = ("lower SOLVER.BASE_LR or SEARCH.ARCH_LR, or raise SOLVER.WARMUP_ITERS, "
           "then --resume")

    def __init__(self, cfg: CfgNode, model: Supernet, device: torch.device):
        second_order = cfg.SEARCH.SECOND_ORDER
        super().__init__(cfg, model, build_optimizer(cfg, model.weight_named_parameters()),
                         amp_policy(cfg, device, second_order=second_order), device)
        self.weights = model.weight_parameters()
        if cfg.SOLVER.PARALLEL_HEAD_LEVELS:
            enable_parallel_levels(model.detector, get_world_size(), SEARCH_FIRST_LEVELS)
        self.net = maybe_compile(cfg, model)
        self.cost = SearchCost(cfg, model.tower_alphas, model.num_classes)
        self.architect = Architect(self.loss, self.weights, model.arch_parameters(),
                                   lr=cfg.SEARCH.ARCH_LR, betas=cfg.SEARCH.ARCH_BETAS,
                                   weight_decay=cfg.SEARCH.ARCH_WEIGHT_DECAY,
                                   second_order=second_order, reduce=mean_over_ranks,
                                   scaler=self.scaler,
                                   penalty=self.cost.penalty if self.cost.active else None)

    def loss(self, batch: Batch) -> Tensor:
        """The supernet's total loss on one batch (the architect's loss function)."""
        return sum(forward_losses(self.net, *batch, self.amp).values())

    def run(self, batch: tuple[Batch, Batch]) -> StepOutput:
        train_batch, val_batch = (to_device(*b, self.device) for b in batch)
        val_loss = self.architect.step(val_batch, train_batch, self.optimizer)
        with frozen(self.model.arch_parameters()):
            losses = forward_losses(self.net, *train_batch, self.amp)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(sum(losses.values())).backward(inputs=self.weights)
        for p in self.weights:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        mean_over_ranks([p.grad for p in self.weights])
        self.apply_gradients(self.weights)
        with torch.no_grad():
            cost = self.cost.expected()
        return StepOutput({k: v.detach() for k, v in losses.items()},
                          {"val_loss": val_loss, self.cost.scalar_name: cost})

    def state_dict(self) -> dict:
        return super().state_dict() | {"arch_optimizer": self.architect.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.architect.optimizer.load_state_dict(state["arch_optimizer"])


def derive_genotypes(model: Supernet) -> tuple[Genotype, Genotype]:
    """The (box, cls) genotypes of the current alphas."""
    alphas = model.tower_alphas()
    box, cls = (derive_genotype(alphas[t]) for t in TOWERS)
    return box, cls


def write_genotypes(genotypes: tuple[Genotype, Genotype], output_dir: str, iteration: int,
                    fmt: str) -> None:
    """On the main rank: genotype.log and the genotype_{box,cls} diagrams, atomically."""
    if not is_main_process():
        return
    write_genotype_file(os.path.join(output_dir, GENOTYPE_FILE), *genotypes)
    for tower, genotype in zip(TOWERS, genotypes):
        draw_genotype(genotype, os.path.join(output_dir, f"genotype_{tower}"),
                      f"FAD cell of the {tower} tower", fmt, f"search iteration {iteration}")
    logger.info("iteration %d genotypes (%s):\n  box: %s\n  cls: %s", iteration,
                os.path.join(output_dir, GENOTYPE_FILE), *map(format_genotype, genotypes))


def log_collapse(model: Supernet, iteration: int, warmup_iters: int) -> None:
    """Report edges where `none` leads (the derivation still skips `none`): only after the
    weights' warm-up (`warmup_iters`) and only a real lead, `none` at least COLLAPSE_LEAD times
    the edge's best other op (the alphas start uniform, where any op tops an edge by noise); a
    warning once `none` holds more than half of an edge's weight."""
    if iteration <= warmup_iters:
        return
    for tower, alphas in model.tower_alphas().items():
        edges = none_dominated_edges(alphas, COLLAPSE_LEAD)
        if edges:
            total = sum(a.shape[0] for a in alphas)
            detail = ", ".join(f"node{i}<-{j} ({w:.3f})" for i, j, w in edges)
            level = logging.WARNING if max(w for _, _, w in edges) > 0.5 else logging.INFO
            logger.log(level, "collapse watch: 'none' is the top op of %d/%d %s-tower edges at "
                       "iteration %d: %s", len(edges), total, tower, iteration, detail)


class GenotypeHook(HookBase):
    """The search's extras: softmaxed alphas to tensorboard with every log line; after every
    checkpoint genotype.log + diagrams (SEARCH.DIAGRAM_FORMAT), the alpha pictures and
    histories (`visuals.py`) and the collapse watch (after `warmup_iters`)."""

    def __init__(self, model: Supernet, output_dir: str, fmt: str, warmup_iters: int):
        self.model, self.output_dir, self.fmt = model, output_dir, fmt
        self.warmup_iters = warmup_iters

    def after_step(self, trainer: Trainer) -> None:
        if trainer.log_now:
            scalars: dict[str, float] = {}
            for tower, alphas in self.model.tower_alphas().items():
                scalars.update(softmax_alpha_scalars(tower, alphas))
            trainer.tb.add_scalars(scalars, trainer.iter)

    def after_checkpoint(self, trainer: Trainer) -> None:
        genotypes = derive_genotypes(self.model)
        write_genotypes(genotypes, self.output_dir, trainer.iter, self.fmt)
        if is_main_process():
            write_search_visuals(self.model.tower_alphas(), genotypes, self.output_dir,
                                 trainer.iter, trainer.tb)
        log_collapse(self.model, trainer.iter, self.warmup_iters)


def search(cfg: CfgNode, model: Supernet, train_set, val_set, device: torch.device,
           resume: bool = False, extra_state: dict | None = None) -> tuple[Genotype, Genotype]:
    """Run (or resume) the bilevel search; returns the final (box, cls) genotypes."""
    fmt = cfg.SEARCH.DIAGRAM_FORMAT
    step = SearchStep(cfg, model, device)
    cost_hook = CostHook(cfg, step.cost, model.num_classes, cfg.OUTPUT_DIR)
    trainer = Trainer(cfg, step,
                      lambda start: zip(make_train_loader(cfg, train_set, start),
                                        make_train_loader(cfg, val_set, start)),
                      hooks=[GenotypeHook(model, cfg.OUTPUT_DIR, fmt, cfg.SOLVER.WARMUP_ITERS),
                             cost_hook],
                      extra_state=extra_state, prefix="search",
                      build=lambda c: build_supernet(c, model.num_classes))
    trainer.resume_or_load(resume)
    logger.info("search: %d train / %d val images, %s alpha steps", len(train_set), len(val_set),
                "second-order" if cfg.SEARCH.SECOND_ORDER else "first-order")
    trainer.train()
    return derive_genotypes(model)


def run_search(cfg: CfgNode, device: torch.device,
               resume: bool = False) -> tuple[Genotype, Genotype]:
    """Build the search set, split it into disjoint train/val halves, build the supernet, search.

    DATASETS.TEST is not used (the search evaluates no detector); a value other than the default
    gets a warning.
    """
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch != "FCOS":
        raise ConfigError(f"MODEL.META_ARCHITECTURE {arch}: the search is for FCOS heads; set "
                          "MODEL.META_ARCHITECTURE FCOS (train other detectors with fad-train)")
    if tuple(cfg.DATASETS.TEST) != tuple(get_cfg_defaults().DATASETS.TEST):
        logger.warning("DATASETS.TEST %s is not used: the search evaluates no detector (the "
                       "alphas are fit on a held-out share of DATASETS.TRAIN, "
                       "SEARCH.VAL_FRACTION); test the searched detector after fad-train",
                       tuple(cfg.DATASETS.TEST))
    dataset = build_dataset(cfg, cfg.DATASETS.TRAIN, is_train=True)
    num_classes = dataset.num_classes
    if cfg.MODEL.NUM_CLASSES and cfg.MODEL.NUM_CLASSES != num_classes:
        raise ConfigError(f"MODEL.NUM_CLASSES {cfg.MODEL.NUM_CLASSES} but {cfg.DATASETS.TRAIN} "
                          f"has {num_classes} classes; set MODEL.NUM_CLASSES 0 to take it from "
                          "the data")
    train_set, val_set = split_dataset(dataset, cfg.SEARCH.VAL_FRACTION, cfg.SEED)
    logger.info("search set %s: %d images, %d classes -> %d train / %d val", cfg.DATASETS.TRAIN,
                len(dataset), num_classes, len(train_set), len(val_set))
    model = build_supernet(cfg, num_classes).to(device)
    return search(cfg, model, train_set, val_set, device, resume,
                  extra_state={"classes": list(dataset.classes)})
