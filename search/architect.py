"""The architect: one Adam step of the alphas per search iteration (first or second order).

First order: dalpha = grad_alpha L_val(w, alpha) at the *current* weights w.
Second order (unrolled, DARTS): with the weight optimizer's lr xi, momentum buffer m and decay,
  w' = w - xi * (momentum * m + grad_w L_train(w) + wd * w)
  dalpha = grad_alpha L_val(w', alpha) - grad^2_{alpha,w} L_train(w, alpha) . (xi * grad_w' L_val)
where the Hessian-vector product is the central finite difference
  (grad_alpha L_train(w + eps v) - grad_alpha L_train(w - eps v)) / (2 * eps),  eps = 0.01 / ||v||.
Per-parameter learning rates (bias lr x2) are folded into v, so the perturbation of w is
0.01 * grad_w' L_val / ||grad_w' L_val||, as in DARTS.
A cost penalty P(alpha) (`fad.search.cost`, MODEL.FAD.COST) is added to L_val in both orders;
it depends on the alphas only, so it adds grad_alpha P to dalpha and nothing to the weight
gradients or the Hessian-vector product. Without one the objective is exactly L_val.
The forwards that only feed alpha gradients (the first-order val loss, the two losses of the
Hessian-vector product) run with the weights `frozen` (requires_grad off): autograd then
records nothing for the parts that do not depend on the alphas (backbone, FPN, the first ops
of the towers), and the alpha gradients, the losses and BatchNorm's running statistics are
the same bit for bit (tests/test_search_architect.py).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

import torch
from torch import Tensor, nn

LossFn = Callable[[Any], Tensor]
Penalty = Callable[[], Tensor]
GradReducer = Callable[[list[Tensor]], None]


def _no_reduce(tensors: list[Tensor]) -> None:
    return None


def _grads(loss: Tensor, params: list[nn.Parameter]) -> list[Tensor]:
    return list(torch.autograd.grad(loss, params, materialize_grads=True))


@contextmanager
def frozen(weights: list[nn.Parameter]) -> Iterator[None]:
    """`weights` with requires_grad off inside the block (each flag restored after it, also on
    an error): a forward in it records autograd only where the alphas enter, which is all that
    `torch.autograd.grad(loss, alphas)` walks."""
    flags = [p.requires_grad for p in weights]
    for p in weights:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(weights, flags):
            p.requires_grad_(flag)


@torch.no_grad()
def _copy_into(params: list[nn.Parameter], values: list[Tensor]) -> None:
    for p, v in zip(params, values):
        p.copy_(v)


def finite_difference_hvp(loss_fn: LossFn, batch: Any, weights: list[nn.Parameter],
                          alphas: list[nn.Parameter], vector: list[Tensor], r: float = 0.01,
                          reduce: GradReducer = _no_reduce) -> list[Tensor]:
    """grad^2_{alpha,w} L(w, alpha) . vector by central differences of grad_alpha L.

    eps = r / ||vector||; the weights are restored exactly afterwards.
    """
    norm = torch.sqrt(sum(v.double().square().sum() for v in vector))
    eps = r / norm.clamp_min(1e-12)
    backup = [p.detach().clone() for p in weights]
    results = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for p, b, v in zip(weights, backup, vector):
                p.copy_(b + sign * eps * v)
        with frozen(weights):
            loss = loss_fn(batch)
        g = _grads(loss, alphas)
        reduce(g)
        results.append(g)
    _copy_into(weights, backup)
    return [(gp - gm) / (2 * eps) for gp, gm in zip(*results)]


class Architect:
    """Owns the alpha optimizer (Adam) and computes the alpha gradient each iteration.

    `loss_fn(batch) -> scalar` runs the supernet in training mode; `reduce(tensors)` averages a
    list of gradients over ranks in place (identity on one process), so alphas stay identical.
    An enabled `scaler` (fp16, first order only; see `fad.engine.amp`) scales the val loss and
    unscales the alpha gradients in its `step`, which skips the Adam step on an overflow; the
    caller runs `scaler.update()` once per iteration after its weight step.
    `penalty() -> 0-dim Tensor` (a function of the alphas only), when given, is added to the val
    loss of the alpha objective (first and second order).
    """

    def __init__(self, loss_fn: LossFn, weights: list[nn.Parameter], alphas: list[nn.Parameter],
                 lr: float = 3e-4, betas: tuple[float, float] = (0.5, 0.999),
                 weight_decay: float = 1e-3, second_order: bool = False,
                 reduce: GradReducer = _no_reduce, scaler: torch.amp.GradScaler | None = None,
                 penalty: Penalty | None = None):
        self.loss_fn, self.weights, self.alphas = loss_fn, weights, alphas
        self.penalty = penalty
        self.second_order, self.reduce = second_order, reduce
        self.scaler = scaler if scaler is not None else torch.amp.GradScaler("cpu", enabled=False)
        if second_order and self.scaler.is_enabled():
            raise ValueError("second-order alpha steps run in fp32; pass no enabled GradScaler")
        self.optimizer = torch.optim.Adam(alphas, lr=lr, betas=tuple(betas),
                                          weight_decay=weight_decay)

    def step(self, val_batch: Any, train_batch: Any = None,
             weight_optimizer: torch.optim.Optimizer | None = None) -> Tensor:
        """Set alpha grads (first or second order), Adam step; returns the val loss (without
        the penalty; detached 0-dim tensor, not copied to the host)."""
        if self.second_order:
            if train_batch is None or weight_optimizer is None:
                raise ValueError("second-order alpha steps need the train batch and the weight "
                                 "optimizer")
            grads, loss = self.unrolled_grads(val_batch, train_batch, weight_optimizer)
        else:
            with frozen(self.weights):
                loss = self.loss_fn(val_batch)
            grads = _grads(self.scaler.scale(self._objective(loss)), self.alphas)
            self.reduce(grads)
        for a, g in zip(self.alphas, grads):
            a.grad = g
        self.scaler.step(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def _objective(self, val_loss: Tensor) -> Tensor:
        """The alpha objective: the val loss, plus the penalty when there is one."""
        return val_loss if self.penalty is None else val_loss + self.penalty()

    def _sgd_hyper(self, optimizer: torch.optim.Optimizer
                   ) -> dict[int, tuple[float, float, float, Tensor | None]]:
        """id(param) -> (lr, weight decay, momentum, momentum buffer) from the weight optimizer."""
        out = {}
        for group in optimizer.param_groups:
            for p in group["params"]:
                buf = optimizer.state.get(p, {}).get("momentum_buffer")
                out[id(p)] = (group["lr"], group.get("weight_decay", 0.0),
                              group.get("momentum", 0.0), buf)
        return out

    def unrolled_grads(self, val_batch: Any, train_batch: Any,
                       optimizer: torch.optim.Optimizer) -> tuple[list[Tensor], Tensor]:
        """Second-order alpha gradient (see the module docstring) and the val loss at w'."""
        hyper = self._sgd_hyper(optimizer)
        missing = [p for p in self.weights if id(p) not in hyper]
        if missing:
            raise ValueError(f"{len(missing)} supernet weights are not in the weight optimizer")
        backup = [p.detach().clone() for p in self.weights]
        g = _grads(self.loss_fn(train_batch), self.weights)
        self.reduce(g)
        lrs = []
        with torch.no_grad():
            for p, gp in zip(self.weights, g):
                lr, wd, momentum, buf = hyper[id(p)]
                step = gp + wd * p
                if buf is not None:
                    step = step + momentum * buf
                p.sub_(lr * step)
                lrs.append(lr)
        val_loss = self.loss_fn(val_batch)
        grads = _grads(self._objective(val_loss), self.alphas + self.weights)
        self.reduce(grads)
        dalpha, dw = grads[: len(self.alphas)], grads[len(self.alphas):]
        _copy_into(self.weights, backup)
        vector = [lr * d for lr, d in zip(lrs, dw)]
        hvp = finite_difference_hvp(self.loss_fn, train_batch, self.weights, self.alphas, vector,
                                    reduce=self.reduce)
        return [da - h for da, h in zip(dalpha, hvp)], val_loss
