"""Architect: first-order Adam step, finite-difference HVP and the unrolled gradient vs autograd;
the alpha step's frozen weights change nothing."""
import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call

from fad.search.architect import Architect, finite_difference_hvp, frozen


class TinySupernet(nn.Module):
    """One mixed edge over three small ops; alphas are a separate parameter."""

    def __init__(self):
        super().__init__()
        self.ops = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4, bias=False),
                                  nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))])
        self.alpha = nn.Parameter(0.5 * torch.randn(3))

    def forward(self, x):
        w = self.alpha.softmax(-1)
        return sum(wk * torch.tanh(op(x)) for wk, op in zip(w, self.ops))


def _setup(seed=0):
    torch.manual_seed(seed)
    model = TinySupernet().double()
    weights = [p for n, p in model.named_parameters() if n != "alpha"]
    batches = [(torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 4, dtype=torch.float64))
               for _ in range(2)]

    def loss_fn(batch, params=None):
        x, y = batch
        out = model(x) if params is None else functional_call(model, params, (x,))
        return (out - y).square().mean()

    return model, weights, batches, loss_fn


def test_first_order_step_follows_val_gradient():
    model, weights, (_, val), loss_fn = _setup()
    before_w = [p.detach().clone() for p in weights]
    alpha0 = model.alpha.detach().clone()
    g = torch.autograd.grad(loss_fn(val), model.alpha)[0]
    lr, wd = 3e-4, 1e-3
    arch = Architect(loss_fn, weights, [model.alpha], lr=lr, betas=(0.5, 0.999), weight_decay=wd)
    arch.step(val)
    # Adam's first step moves by lr * sign-like(g + wd * alpha)
    gt = g + wd * alpha0
    expected = alpha0 - lr * gt / (gt.abs() + 1e-8)
    torch.testing.assert_close(model.alpha.detach(), expected, rtol=0, atol=1e-9)
    assert torch.all(torch.sign(model.alpha.detach() - alpha0) == -torch.sign(gt))
    for p, b in zip(weights, before_w):
        assert torch.equal(p, b) and p.grad is None


def test_finite_difference_hvp_matches_double_backward():
    model, weights, (train, _), loss_fn = _setup(1)
    torch.manual_seed(2)
    vector = [torch.randn_like(p) for p in weights]
    fd = finite_difference_hvp(loss_fn, train, weights, [model.alpha], vector)
    gw = torch.autograd.grad(loss_fn(train), weights, create_graph=True)
    dot = sum((g * v).sum() for g, v in zip(gw, vector))
    exact = torch.autograd.grad(dot, model.alpha)[0]
    torch.testing.assert_close(fd[0], exact, rtol=1e-4, atol=1e-9)
    # the reference's (g+ - g-) / 2 * eps would be off by a factor of eps^2
    assert exact.abs().max() > 1e-3


def test_unrolled_gradient_matches_exact_autograd():
    model, weights, (train, val), loss_fn = _setup(3)
    names = [n for n, _ in model.named_parameters() if n != "alpha"]
    groups = [{"params": [p], "lr": 0.1 * (2.0 if n.endswith("bias") else 1.0),
               "weight_decay": 0.0 if n.endswith("bias") else 1e-2} for n, p in zip(names, weights)]
    opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    loss_fn(train).backward(inputs=weights)
    opt.step()  # fills the momentum buffers
    opt.zero_grad()

    # exact unrolled gradient: differentiate through w' = w - lr (mom * buf + g(w, alpha) + wd w)
    gw = torch.autograd.grad(loss_fn(train), weights, create_graph=True)
    params = {"alpha": model.alpha}
    for n, p, g, group in zip(names, weights, gw, groups):
        buf = opt.state[p]["momentum_buffer"]
        params[n] = p.detach() - group["lr"] * (0.9 * buf + g + group["weight_decay"] * p.detach())
    exact = torch.autograd.grad(loss_fn(val, params), model.alpha)[0]

    before = [p.detach().clone() for p in weights]
    arch = Architect(loss_fn, weights, [model.alpha], second_order=True)
    grads, _ = arch.unrolled_grads(val, train, opt)
    torch.testing.assert_close(grads[0], exact, rtol=1e-4, atol=1e-8)
    for p, b in zip(weights, before):
        assert torch.equal(p, b)
    first_order = torch.autograd.grad(loss_fn(val), model.alpha)[0]
    assert not torch.allclose(first_order, exact, rtol=1e-3)


def test_second_order_needs_train_batch():
    model, weights, (_, val), loss_fn = _setup()
    arch = Architect(loss_fn, weights, [model.alpha], second_order=True)
    with pytest.raises(ValueError, match="train batch"):
        arch.step(val)


class ConvSupernet(nn.Module):
    """A conv + BatchNorm 'backbone' (no alphas) under one mixed edge of two convs."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.ops = nn.ModuleList([nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)])
        self.alpha = nn.Parameter(0.1 * torch.randn(2))

    def forward(self, x):
        feature = self.backbone(x)
        w = self.alpha.softmax(-1)
        return sum(wk * op(feature) for wk, op in zip(w, self.ops))


def test_first_order_step_with_frozen_weights_is_bit_identical():
    """The alpha step's forward runs with the weights frozen: the backbone records no autograd
    (its output needs no grad), while the new alphas and BatchNorm's running statistics equal,
    bit for bit, those of a step whose forward has every weight requiring grad."""
    torch.manual_seed(0)
    model = ConvSupernet().train()
    reference = copy.deepcopy(model)
    x, y = torch.randn(2, 3, 12, 16), torch.randn(2, 8, 12, 16)
    seen = []
    model.backbone.register_forward_hook(lambda m, i, out: seen.append(out.requires_grad))

    def loss_fn(net):
        return lambda batch: (net(batch[0]) - batch[1]).square().mean()

    weights = [p for n, p in model.named_parameters() if n != "alpha"]
    arch = Architect(loss_fn(model), weights, [model.alpha], lr=0.01, weight_decay=1e-3)
    loss = arch.step((x, y))

    adam = torch.optim.Adam([reference.alpha], lr=0.01, betas=(0.5, 0.999), weight_decay=1e-3)
    ref_loss = loss_fn(reference)((x, y))
    reference.alpha.grad = torch.autograd.grad(ref_loss, reference.alpha)[0]
    adam.step()
    assert seen == [False]
    assert torch.equal(loss, ref_loss.detach())
    assert not torch.equal(model.alpha, reference.alpha.new_zeros(2))
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name
    assert all(p.requires_grad and p.grad is None for p in weights)


def test_frozen_restores_each_flag_also_on_an_error():
    on, off = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2), requires_grad=False)
    with pytest.raises(RuntimeError, match="inside"):
        with frozen([on, off]):
            assert not on.requires_grad and not off.requires_grad
            raise RuntimeError("inside")
    assert on.requires_grad and not off.requires_grad
