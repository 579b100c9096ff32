"""`python -m fad.ops.selftest`: every backend of every op against the pure-PyTorch reference.

The first command to run on a new machine. For each op (MSDA, depthwise 3x3, SparseResNet sparse
execution, GroupNorm + ReLU, a convolution's weight gradient), each non-reference backend and
each device here (the CPU, and CUDA when torch sees a GPU) it builds or loads the kernel, runs
small random float32 inputs forward and backward (sparse execution: forward only, its kernels
serve inference) through the public op with that backend forced (`fad.ops.backends.using`), and
compares with the reference backend.
One line per backend:

    op         backend  device  result       detail
    msda       cpp      cpu     pass         max error 3.0e-07 (tolerance 1e-04)
    msda       triton   cpu     unavailable  Triton runs CPU tensors only under TRITON_INTERPRET=1

The error is max |got - reference| / max(1, max |reference|) over the output and the gradients.
Exit code 1 when an available backend fails; an unavailable backend is reported, not a failure.
`TRITON_INTERPRET=1 python -m fad.ops.selftest` also runs the Triton kernels on the CPU.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from . import msda, sparse
from .backends import using
from .build import ExtensionUnavailable, load
from .conv_wgrad import use_fast_weight_grad
from .depthwise import depthwise_conv3x3
from .gn_relu import group_norm_relu, group_norm_relu_segments
from .msda.inputs import random_msda_inputs

TOLERANCE = 1e-4  # float32 inputs, errors relative to the reference magnitude
HEADER = f"{'op':<10} {'backend':<8} {'device':<7} {'result':<12} detail"


@dataclass
class Result:
    """One line of the report."""

    op: str
    backend: str
    device: str
    result: str  # "pass", "FAIL" or "unavailable"
    detail: str

    def line(self) -> str:
        return f"{self.op:<10} {self.backend:<8} {self.device:<7} {self.result:<12} {self.detail}"


def max_error(got: Sequence[Tensor], ref: Sequence[Tensor]) -> float:
    """max |got - ref| / max(1, max |ref|) over pairs of tensors."""
    return max(float((g.double() - r.double()).abs().max()) / max(1.0, float(r.abs().max()))
               for g, r in zip(got, ref))


def _msda_run(device: str) -> list[Tensor]:
    """Output and the value / location / weight gradients of one MSDA call."""
    args = random_msda_inputs(2, [(5, 4), (2, 3)], 2, 8, 6, 3, dtype=torch.float32,
                              device=device, edges=True, kinks=False)
    value, shapes, starts, loc, attn = args
    leaves = [t.requires_grad_() for t in (value, loc, attn)]
    out = msda.multi_scale_deformable_attention(value, shapes, starts, loc, attn)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device)
    return [out.detach(), *torch.autograd.grad(out, leaves, grad)]


def _depthwise_run(device: str) -> list[Tensor]:
    """Output and the input / weight gradients of a dilated depthwise 3x3 convolution."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 9, 7, generator=g).to(device).requires_grad_()
    w = torch.randn(3, 1, 3, 3, generator=g).to(device).requires_grad_()
    out = depthwise_conv3x3(x, w, dilation=2)
    grad = torch.randn(out.shape, generator=g).to(device)
    return [out.detach(), *torch.autograd.grad(out, (x, w), grad)]


def _gn_relu_run(device: str) -> list[Tensor]:
    """Outputs and input / weight / bias gradients of GroupNorm + ReLU, channels-last: on the
    whole map, and per segment (`group_norm_relu_segments`: rows 0-1 and 3-4 of columns 0-5,
    the other positions in none)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 12, 5, 7, generator=g).to(device, memory_format=torch.channels_last)
    weight, bias = (torch.randn(12, generator=g).to(device) for _ in range(2))
    leaves = [t.requires_grad_() for t in (x, weight, bias)]
    runs = torch.tensor([[0, 6, 0], [6, 1, -1], [7, 6, 0], [13, 8, -1], [21, 6, 1],
                         [27, 1, -1], [28, 6, 1], [34, 1, -1]])
    results = []
    for out in (group_norm_relu(x, 4, weight, bias),
                group_norm_relu_segments(x, 4, weight, bias, 1e-5, runs, 2)):
        grad = torch.randn(out.shape, generator=g).to(device)
        results += [out.detach(), *torch.autograd.grad(out, leaves, grad)]
    return results


def _conv_wgrad_run(device: str) -> list[Tensor]:
    """Output and input / weight / bias gradients of two channels-last training convolutions
    (`WgradConv2d`): 3x3 with 40 input channels (two register blocks and a tail) and 13 outputs,
    a strided, dilated 3x3 with 16."""
    results = []
    with torch.random.fork_rng():  # the layers' initialization, without moving the caller's RNG
        torch.manual_seed(0)
        convs = [(torch.nn.Conv2d(40, 13, 3, padding=1), (2, 40, 6, 9)),
                 (torch.nn.Conv2d(16, 7, 3, stride=2, padding=2, dilation=2), (1, 16, 9, 8))]
    g = torch.Generator().manual_seed(0)
    for conv, shape in convs:
        use_fast_weight_grad(conv.to(device))
        x = torch.randn(shape, generator=g).to(device, memory_format=torch.channels_last)
        out = conv(x.requires_grad_())
        grad = torch.randn(out.shape, generator=g).to(device)
        results += [out.detach(), *torch.autograd.grad(out, (x, conv.weight, conv.bias), grad)]
    return results


def _sparse_run(device: str) -> list[Tensor]:
    """Outputs of every sparse-execution kernel (inference, no gradients): interpolation (new
    tensor and onto the residual), active rows, im2col windows, a gathered conv, tap sums."""
    g = torch.Generator().manual_seed(0)
    n, h, w, c = 2, 7, 9, 40
    ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    mask = torch.rand(n * h * w, generator=g)
    mask = torch.where(mask < 0.5, torch.zeros_like(mask), mask)
    mask[::5] = 1.0
    index = ((mask > 0).long().cumsum(0) - 1).clamp(min=0)
    rows = torch.randn(int((mask > 0).sum()), c, generator=g)
    x_rows = torch.randn(n * h * w, c, generator=g)
    out_mask = (torch.rand(n * ho * wo, generator=g) < 0.5).float()
    taps = torch.tensor([0.05, 0.25, 0.6, 0.25, 0.05])
    weight, weight2 = torch.randn(9 * c, 3, generator=g) / c, torch.randn(3, 2, generator=g)
    taps_y = torch.randn(n * h * w, 9 * 3, generator=g)  # tap contributions of 3 channels
    bias1, bias2 = torch.randn(1, generator=g), torch.randn(2, generator=g)
    mask, index, rows, x_rows, out_mask, taps, weight, weight2, taps_y, bias1, bias2 = (
        t.to(device) for t in (mask, index, rows, x_rows, out_mask, taps, weight, weight2,
                               taps_y, bias1, bias2))
    with torch.no_grad():
        interpolated = sparse.interpolate_rows(rows, index, mask, taps, (n, h, w), relu=True,
                                               relu_rows=True, bias=torch.ones(c, device=device),
                                               residual=x_rows)
        positions, row_of = sparse.active_rows(out_mask)
        windows = sparse.gather_windows(x_rows, positions, n, h, w, ho, wo, 2)
        conv = sparse.gather_conv(x_rows, positions, n, h, w, ho, wo, 3, 2, weight,
                                  torch.ones(3, device=device), relu=True, weight2=weight2)
        onto = sparse.interpolate_rows(rows, index, mask, taps, (n, h, w), relu=True,
                                       residual=x_rows.clone(), into_residual=True)
        tap_sums = [sparse.tap_sum(taps_y, bias1, n, h, w, 0, 1),
                    sparse.tap_sum(taps_y, bias2, n, h, w, 1, 2)]
    return [interpolated, windows, conv, onto, row_of, *tap_sums]


def _check(op: str, backend: str, device: str, run: Callable[[str], list[Tensor]],
           reason: str | None, note: str = "") -> Result:
    if reason is not None:
        return Result(op, backend, device, "unavailable", reason)
    try:
        with using(op, "reference"):
            expected = run(device)
        with using(op, backend):
            got = run(device)
        error = max_error(got, expected)
    except Exception as exc:  # a crashing kernel is a failed check, reported on its line
        first = (str(exc).strip().splitlines() or [""])[0]
        return Result(op, backend, device, "FAIL", f"{type(exc).__name__}: {first}")
    result = "pass" if error <= TOLERANCE else "FAIL"
    return Result(op, backend, device, result,
                  f"max error {error:.1e} (tolerance {TOLERANCE:.0e}){note}")


def _load_reason(extension: str) -> str | None:
    try:
        load(extension)
    except ExtensionUnavailable as exc:
        return str(exc)
    return None


def run_all() -> list[Result]:
    """Check every (op, backend, device) of this machine."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = []
    for device in devices:
        for backend in ("cpp", "cuda", "triton"):
            if {"cpp": "cpu", "cuda": "cuda"}.get(backend, device) == device:
                results.append(_check("msda", backend, device, _msda_run,
                                      msda.backend_unavailable(backend, device)))
        if device == "cpu":
            results.append(_check("depthwise", "cpp", device, _depthwise_run,
                                  _load_reason("depthwise_cpu")))
            results.append(_check("sparse", "cpp", device, _sparse_run,
                                  _load_reason("sparse_cpu"), "; forward only (inference)"))
            results.append(_check("gn_relu", "cpp", device, _gn_relu_run,
                                  _load_reason("gn_relu_cpu"),
                                  "; channels-last input, whole and per segment"))
            results.append(_check("conv_wgrad", "cpp", device, _conv_wgrad_run,
                                  _load_reason("conv_wgrad_cpu"), "; training convolutions"))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Print the report; 1 when an available backend failed, else 0."""
    del argv
    print(f"torch {torch.__version__}, CUDA device: "
          f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    print(HEADER)
    results = run_all()
    for result in results:
        print(result.line())
    return 1 if any(r.result == "FAIL" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
