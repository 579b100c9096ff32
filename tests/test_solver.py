"""Warm-up multistep schedule and optimizer parameter rules."""
import copy

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


@pytest.mark.parametrize("name", ["SGD", "AdamW"])
def test_fused_update_equals_the_for_loop_one(name):
    """build_optimizer takes torch's fused kernel for CPU parameters; its steps give the plain
    for-loop optimizer's parameters, also after loading the for-loop one's state dict (a
    checkpoint written before the kernel was used)."""
    cfg = get_cfg_defaults()
    cfg.merge_from_list(["SOLVER.OPTIMIZER", name, "SOLVER.BASE_LR", 0.05])
    torch.manual_seed(0)
    fused_model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(6, 2)).double()
    loop_model = copy.deepcopy(fused_model)
    initial = [p.detach().clone() for p in fused_model.parameters()]
    fused = build_optimizer(cfg, fused_model)
    assert all(g["fused"] for g in fused.param_groups)
    by_id = dict(zip(map(id, fused_model.parameters()), loop_model.parameters()))
    loop = type(fused)([{**g, "params": [by_id[id(p)] for p in g["params"]], "fused": None,
                         "foreach": False} for g in fused.param_groups])
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    for step in range(4):
        if step == 2:  # resume from the for-loop optimizer's checkpoint
            fused.load_state_dict(copy.deepcopy(loop.state_dict()))
        for model, opt in ((fused_model, fused), (loop_model, loop)):
            opt.zero_grad()
            model(x).tanh().sum().backward()
            opt.step()
    for a, b, before in zip(fused_model.parameters(), loop_model.parameters(), initial):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        assert (a - before).abs().amax() > 1e-3  # the steps moved every parameter


def test_meta_parameters_take_the_for_loop():
    cfg = get_cfg_defaults()
    opt = build_optimizer(cfg, torch.nn.Linear(2, 2, device="meta"))
    assert not any(g["fused"] for g in opt.param_groups)
