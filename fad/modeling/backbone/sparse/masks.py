"""Sampling masks of SparseResNet: mask logits, Gumbel sampling, grid prior, forced density.

Each block has two mask convs (3x3, pad 1, one output channel, reading the block input). The
logits give p = sigmoid(logits); `MaskSampler` turns them into the mask m:
- training: relaxed Bernoulli m = sigmoid((logits + L) / T), L logistic noise (the two-class
  Gumbel-softmax), T per module starting at TEMPERATURE_INIT and multiplied by TEMPERATURE_DECAY
  after every training forward;
- inference, stochastic: the same with T = TEST_TEMPERATURE, then m = m * (m >= 0.5), which
  samples each position with probability p;
- inference, deterministic: m = (p >= 0.5);
- a grid prior sets m = 1 on every GRID_INTERVAL-th row and column (train and test);
- `forced_density` replaces the masks by seeded Bernoulli(d) masks (benchmarks): the same seed
  gives the same masks on every forward, so two execution paths see identical masks.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from fad.ops.sparse import tap_sum

SAMPLING_MODES = ("stochastic", "deterministic")


def mask_tap_weight(convs: Sequence[nn.Conv2d]) -> Tensor:
    """The GEMM weight [Cin, 9 * sum O_j], ordered (ky, kx, output), of 3x3 convs with O_j
    outputs each: pixels [M, Cin] @ it = every tap's contribution to every output."""
    weight = torch.cat([c.weight for c in convs])
    return weight.permute(1, 2, 3, 0).reshape(weight.shape[1], -1)


def small_conv3x3(x: Tensor, convs: Sequence[nn.Conv2d],
                  taps: Tensor | None = None) -> list[Tensor]:
    """Outputs of 3x3 pad-1 convs with few output channels, as one GEMM over the pixels.

    x [N, Cin, H, W] (cheapest channels-last) -> one [N, O_j, H_j, W_j] per conv (its stride).
    Equals `conv(x)` up to float rounding: y = x_pixels @ `mask_tap_weight(convs)` holds every
    tap's contribution [N*H*W, 9 * sum O_j] (one pass over x, where a direct conv with so few
    output channels is slow on the CPU), and each output adds its nine taps from shifted
    windows of y (the compiled `tap_sum` kernel at CPU inference). `taps`: y when it is already
    known (sparse execution computes it while writing x, see `execution.MaskLink`).
    """
    n, cin, h, w = x.shape
    outs = [c.out_channels for c in convs]
    y = taps
    if y is None:
        y = x.permute(0, 2, 3, 1).reshape(-1, cin) @ mask_tap_weight(convs).to(x.dtype)
    results, start = [], 0
    for conv, o in zip(convs, outs):
        results.append(tap_sum(y, conv.bias.to(x.dtype), n, h, w, start, conv.stride[0]))
        start += o
    return results


class MaskSampler(nn.Module):
    """Turn mask logits [N, 1, H, W] into the mask m [N, 1, H, W] (see the module docstring)."""

    def __init__(self, temperature_init: float = 1.0, temperature_decay: float = 0.99998,
                 test_temperature: float = 0.03, grid_interval: int = 11,
                 sampling: str = "stochastic", unit_id: int = 0):
        super().__init__()
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling must be one of {', '.join(SAMPLING_MODES)}, "
                             f"got {sampling!r}")
        self.register_buffer("temperature", torch.tensor(float(temperature_init)))
        self.temperature_decay = temperature_decay
        self.test_temperature = test_temperature
        self.grid_interval = grid_interval
        self.sampling = sampling
        self.unit_id = unit_id
        self.forced: tuple[float, int] | None = None

    @staticmethod
    def _noisy(logits: Tensor, inv_temperature: Tensor | float) -> Tensor:
        """(logits + logistic noise) / T: the logit of the two-class Gumbel-softmax."""
        return (logits + torch.logit(torch.rand_like(logits), eps=1e-6)) * inv_temperature

    def forward(self, logits: Tensor) -> Tensor:
        if self.forced is not None:
            density, seed = self.forced
            gen = torch.Generator(device=logits.device).manual_seed(seed + 7919 * self.unit_id)
            u = torch.rand(logits.shape, generator=gen, device=logits.device, dtype=logits.dtype)
            return u.lt_(density)  # 1 where u < density, else 0 (one pass, u's dtype)
        if self.training:
            m = torch.sigmoid(self._noisy(logits, 1.0 / self.temperature))
            with torch.no_grad():
                self.temperature.mul_(self.temperature_decay)
            if self.grid_interval > 0:
                grid = torch.zeros_like(m, dtype=torch.bool)
                grid[..., ::self.grid_interval, ::self.grid_interval] = True
                m = m.masked_fill(grid, 1.0)
            return m
        if self.sampling == "stochastic":
            z = self._noisy(logits, 1.0 / self.test_temperature)
            m = torch.sigmoid(z) * (z >= 0)
        else:
            m = (logits >= 0).to(logits.dtype)
        if self.grid_interval > 0:
            m[..., ::self.grid_interval, ::self.grid_interval] = 1.0
        return m


@contextlib.contextmanager
def forced_density(model: nn.Module, density: float, seed: int = 0) -> Iterator[None]:
    """Within the block, every MaskSampler in `model` returns seeded Bernoulli(density) masks."""
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"forced density must be in [0, 1], got {density}")
    samplers = [m for m in model.modules() if isinstance(m, MaskSampler)]
    previous = [s.forced for s in samplers]
    for s in samplers:
        s.forced = (float(density), int(seed))
    try:
        yield
    finally:
        for s, prev in zip(samplers, previous):
            s.forced = prev
