"""Warm-up multistep schedule and optimizer parameter rules."""
import pytest
import torch

from fad.config import get_cfg_defaults
from fad.engine.solver import build_lr_scheduler, build_optimizer, lr_factor


def test_lr_factor_by_hand():
    assert lr_factor(0, (10, 20), 0.1, 1 / 3, 4) == pytest.approx(1 / 3)
    assert lr_factor(2, (10, 20), 0.1, 1 / 3, 4) == pytest.approx(1 / 3 * 0.5 + 0.5)
    assert lr_factor(4, (10, 20), 0.1, 1 / 3, 4) == pytest.approx(1.0)
    assert lr_factor(10, (10, 20), 0.1, 1 / 3, 4) == pytest.approx(0.1)
    assert lr_factor(25, (10, 20), 0.1, 1 / 3, 4) == pytest.approx(0.01)


def test_bias_rules_and_scheduler_steps():
    cfg = get_cfg_defaults()
    cfg.merge_from_list(["SOLVER.BASE_LR", 0.1, "SOLVER.WARMUP_ITERS", 0, "SOLVER.STEPS", (2,)])
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(cfg, model)
    by_shape = {g["params"][0].dim(): g for g in opt.param_groups}
    assert by_shape[1]["lr"] == pytest.approx(0.2) and by_shape[1]["weight_decay"] == 0.0
    assert by_shape[2]["lr"] == pytest.approx(0.1) and by_shape[2]["weight_decay"] == 1e-4
    sched = build_lr_scheduler(cfg, opt)
    lrs = []
    for _ in range(3):
        lrs.append(by_shape[2]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1, 0.1, 0.01])


def test_frozen_parameters_are_left_out():
    cfg = get_cfg_defaults()
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model[0].weight.requires_grad_(False)
    opt = build_optimizer(cfg, model)
    params = [p for g in opt.param_groups for p in g["params"]]
    assert all(p is not model[0].weight for p in params) and len(params) == 3
