"""ModelHooks: the one declaration of what a model tells the engine (aux losses, log stats,
optimizer groups, DDP's unused-parameter search), and the engine reading it."""
import gc
import weakref

import pytest
import torch
from torch import nn

from fad.config import get_cfg_defaults
from fad.engine import trainer
from fad.engine.hooks import collect_aux_losses, collect_log_stats
from fad.engine.solver import build_optimizer
from fad.modeling.hooks import ModelHooks


class SparseLike(nn.Module, ModelHooks):
    """Overrides two hooks, keeps the defaults of the others."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)

    def aux_losses(self):
        return {"loss_sparse": self.conv.weight.sum()}

    def log_stats(self):
        return {"density": 0.5}


class Detector(nn.Module, ModelHooks):
    ddp_find_unused_parameters = True

    def __init__(self):
        super().__init__()
        self.body = SparseLike()
        self.head = nn.Linear(2, 2)

    def optimizer_param_groups(self, cfg):
        return [{"params": list(self.body.parameters()), "lr": 0.5},
                {"params": list(self.head.parameters())}]


class Structural(nn.Module):
    """Implements every member without the base class: not asked (explicit opt-in)."""

    ddp_find_unused_parameters = False

    def aux_losses(self):
        return {"loss_extra": torch.tensor(1.0)}

    def log_stats(self):
        return {}

    def optimizer_param_groups(self, cfg):
        return None

    def set_progress(self, iteration, epoch):
        pass


def test_only_subclasses_of_the_plain_base_class_are_hooked():
    """A plain class (no runtime-checkable Protocol, whose isinstance costs ~11 us)."""
    assert type(ModelHooks) is type and not getattr(ModelHooks, "_is_protocol", False)
    assert isinstance(SparseLike(), ModelHooks)
    assert not isinstance(Structural(), ModelHooks)
    assert not isinstance(nn.Linear(2, 2), ModelHooks)
    assert SparseLike().optimizer_param_groups(None) is None
    assert SparseLike().ddp_find_unused_parameters is False


def test_aux_losses_and_stats_are_collected_from_submodules():
    model = nn.Sequential(Detector(), Structural(), nn.ReLU())
    aux = collect_aux_losses(model)
    assert set(aux) == {"loss_sparse"}
    torch.testing.assert_close(aux["loss_sparse"], model[0].body.conv.weight.sum())
    assert collect_log_stats(model) == {"density": 0.5}
    assert collect_aux_losses(nn.Linear(2, 2)) == {}


def test_optimizer_groups_come_from_the_model_or_the_solver_default():
    cfg = get_cfg_defaults()
    opt = build_optimizer(cfg, Detector())
    assert [g["lr"] for g in opt.param_groups] == [0.5, cfg.SOLVER.BASE_LR]
    plain = build_optimizer(cfg, nn.Sequential(nn.Linear(2, 2), SparseLike()))
    biases = cfg.SOLVER.BASE_LR * cfg.SOLVER.BIAS_LR_FACTOR
    assert [g["lr"] for g in plain.param_groups] == [cfg.SOLVER.BASE_LR, biases]


def test_wrap_ddp_asks_the_model_about_unused_parameters(monkeypatch):
    seen = []
    monkeypatch.setattr(trainer, "get_world_size", lambda: 2)
    monkeypatch.setattr(nn.parallel, "DistributedDataParallel",
                        lambda m, **kw: seen.append(kw["find_unused_parameters"]) or m)
    for model in (Detector(), SparseLike(), nn.Linear(2, 2)):
        trainer.wrap_ddp(model, torch.device("cpu"))
    assert seen == [True, False, False]


class Counting(nn.Module, ModelHooks):
    """Records what the trainer tells it before each step."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.seen = []

    def set_progress(self, iteration, epoch):
        self.seen.append((iteration, epoch))


class NoOpStep(trainer.TrainStep):
    def run(self, batch):
        return trainer.StepOutput({"loss": self.model.w.sum() * 0})


# NoOpStep never steps the optimizer, so torch warns about the scheduler order
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`:UserWarning")
def test_trainer_tells_the_model_iteration_and_epoch(tmp_path):
    """Epoch = iteration * IMS_PER_BATCH // images per epoch, also after a resume."""
    from fad.engine.amp import amp_policy

    cfg = get_cfg_defaults()
    cfg.merge_from_list(["OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", 5, "SOLVER.AMP", False,
                         "SOLVER.IMS_PER_BATCH", 4, "SOLVER.CHECKPOINT_PERIOD", 100])
    cpu = torch.device("cpu")
    for start, expected in ((0, [(0, 0), (1, 0), (2, 0), (3, 1), (4, 1)]), (3, [(3, 1), (4, 1)])):
        model = Counting()
        step = NoOpStep(cfg, model, torch.optim.SGD(model.parameters(), lr=0.1),
                        amp_policy(cfg, cpu), cpu)
        loop = trainer.Trainer(cfg, step, lambda s: range(s, 5), epoch_size=10)
        loop.iter = start
        loop.train()
        assert model.seen == expected


class HookedStep(trainer.TrainStep):
    """What DetectorStep asks of the hooks every step: the aux losses."""

    def run(self, batch):
        losses = trainer.forward_losses(self.model, [], [], self.amp)
        return trainer.StepOutput({k: v.detach() for k, v in losses.items()})


class HookedPart(Counting):
    def aux_losses(self):
        return {"loss_aux": self.w.sum()}


class HookedModel(nn.Module):
    """A plain top-level module whose hooked part is a submodule."""

    def __init__(self):
        super().__init__()
        self.part, self.head = HookedPart(), nn.Linear(2, 2)

    def forward(self, images, targets):
        return {"loss": self.part.w.sum() * 0}


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`:UserWarning")
def test_the_trainer_walks_the_model_for_hooked_modules_once(tmp_path, monkeypatch):
    """Every step calls set_progress, aux_losses and log_stats, but `modules()` runs once per
    model (and isinstance is never asked of the step's modules again)."""
    from fad.engine.amp import amp_policy

    cfg = get_cfg_defaults()
    cfg.merge_from_list(["OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", 4, "SOLVER.AMP", False,
                         "SOLVER.CHECKPOINT_PERIOD", 100])
    cpu = torch.device("cpu")
    model = HookedModel()
    walks = []
    real_modules = model.modules
    monkeypatch.setattr(model, "modules", lambda: walks.append(1) or real_modules())
    step = HookedStep(cfg, model, torch.optim.SGD(model.parameters(), lr=0.1),
                      amp_policy(cfg, cpu), cpu)
    seen = []
    real_stats = trainer.collect_log_stats
    monkeypatch.setattr(trainer, "collect_log_stats", lambda m: seen.append(1) or real_stats(m))
    trainer.Trainer(cfg, step, lambda s: range(s, 4)).train()
    assert model.part.seen == [(0, 0), (1, 0), (2, 0), (3, 0)] and len(seen) == 4
    assert len(walks) == 1


def test_the_cache_of_hooked_modules_does_not_keep_a_model_alive():
    model = Detector()
    assert collect_log_stats(model) == {"density": 0.5}
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None
