"""MSDA forward+backward: every available backend vs the grid_sample reference, side by side.

Backends timed: on CUDA `triton`, `cuda` (the C++ CUDA kernel) and `reference`; on the CPU
`cpp` and `reference` (`--backends` picks others, e.g. `triton` on the CPU under
TRITON_INTERPRET=1, which is far too slow to time). A backend that cannot run here is listed
under `unavailable` with the reason. `speedup_<backend>` = reference / backend (fwd+bwd),
`forward_speedup_<backend>` and `backward_speedup_<backend>` the same of the forward alone and of
the backward alone (median fwd+bwd less median fwd);
`speedup` is that of the backend `auto` picks on the device (triton on CUDA, cpp on the CPU).

Default size = a Deformable DETR encoder layer on a 640x640 input: batch 1, levels 80x80, 40x40,
20x20, 10x10 (S = 8500 tokens), queries = all tokens, 8 heads, D = 32, 4 points. Sampling
locations are "encoder-like" by default: each query's token centre plus the layer's initial
offset pattern (head direction x (p+1) px) plus N(0, 2 px) noise on every level;
`--locations uniform` draws them uniformly over [0, 1] instead (no cache locality).

Timing: `--warmup` untimed runs, then `--repeats` rounds, kernel and reference alternating;
medians reported; target: speedup >= 2.0.
Peak memory: on CUDA torch.cuda.max_memory_allocated after reset_peak_memory_stats; on the CPU
the process RSS high-water mark (VmHWM, reset by writing 5 to /proc/self/clear_refs) minus the
RSS before the run, i.e. the extra memory of one forward+backward including outputs and
gradients. For the peaks glibc is told to serve blocks >= 64 KiB by mmap (mallopt
M_MMAP_THRESHOLD), so freed tensors leave the RSS at once and earlier runs do not hide later
peaks; the timing runs after that under the policy glibc reaches by itself in a loop (freed
blocks up to 32 MiB kept for reuse), not with every output and gradient in fresh pages, a page
fault per 4 KB (3-4 ms of the kernel's 8-ms forward at the default size). `memory_ratio` =
reference / kernel.
"""
from __future__ import annotations

import argparse
import ctypes
import math
from collections.abc import Callable

import torch

from fad.errors import OpError
from fad.ops import ms_deform_attn_reference, multi_scale_deformable_attention
from fad.ops.backends import using
from fad.ops.msda import backend_unavailable

from .timing import synchronize, time_rounds

DEFAULT_BACKENDS = {"cuda": ("triton", "cuda"), "cpu": ("cpp",)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--image", type=int, default=640, help="square input size in pixels")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dim", type=int, default=32, help="channels per head D")
    parser.add_argument("--points", type=int, default=4)
    parser.add_argument("--levels", type=int, default=4, help="strides 8, 16, 32, 64, ...")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--locations", default="encoder", choices=["encoder", "uniform"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = keep)")
    parser.add_argument("--backends", nargs="+", default=None,
                        choices=["triton", "cuda", "cpp"],
                        help="kernels to time against the reference (default: triton and cuda "
                             "on CUDA, cpp on the CPU)")


def _token_centres(size: int, dtype: torch.dtype) -> torch.Tensor:
    """[size * size, 2] normalised (x, y) centres of a size x size map, row-major."""
    c = (torch.arange(size, dtype=dtype) + 0.5) / size
    y, x = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([x, y], -1).view(-1, 2)


def _inputs(args, device, dtype):
    g = torch.Generator().manual_seed(0)
    sizes = [math.ceil(args.image / 2 ** (3 + i)) for i in range(args.levels)]
    shapes = torch.tensor([[s, s] for s in sizes], dtype=torch.int64)
    areas = shapes.prod(1)
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    n, m, d, levels, points = args.batch, args.heads, args.dim, args.levels, args.points
    num_tokens = int(areas.sum())
    value = torch.randn(n, num_tokens, m, d, generator=g, dtype=dtype)
    if args.locations == "uniform":
        loc = torch.rand(n, num_tokens, m, levels, points, 2, generator=g, dtype=dtype)
    else:
        centres = torch.cat([_token_centres(size, dtype) for size in sizes])  # [S, 2]
        theta = torch.arange(m, dtype=dtype) * (2 * math.pi / m)
        dirs = torch.stack([theta.cos(), theta.sin()], -1)
        dirs = dirs / dirs.abs().max(-1, keepdim=True).values
        steps = torch.arange(1, points + 1, dtype=dtype)[:, None]
        pattern = dirs[:, None, None] * steps  # [M, 1, P, 2] pixels
        noise = torch.randn(n, num_tokens, m, levels, points, 2, generator=g, dtype=dtype)
        pixels = pattern + 2.0 * noise
        scale = torch.tensor(sizes, dtype=dtype)[:, None, None]  # [L, 1, 1]
        loc = centres[None, :, None, None, None] + pixels / scale
    attn = torch.randn(n, num_tokens, m, levels * points, generator=g, dtype=dtype).softmax(-1)
    attn = attn.view(n, num_tokens, m, levels, points)
    grad = torch.randn(n, num_tokens, m * d, generator=g, dtype=dtype)
    return [t.to(device) for t in (value, shapes, starts, loc, attn, grad)]


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"msda benchmark: no {field} in /proc/self/status")


def _set_large_blocks(mmap: bool) -> None:
    """glibc's policy for blocks >= 64 KiB: `mmap` = served by mmap and returned to the OS when
    freed (M_MMAP_THRESHOLD 64 KiB, then malloc_trim), for the peaks; else kept in the heap for
    reuse (thresholds of 32 MiB and 1 GiB: what glibc's own thresholds rise to in a loop that
    frees and allocates blocks of that size again), for the timing."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-1, 64 * 1024 if mmap else 1 << 30)  # M_TRIM_THRESHOLD
    libc.mallopt(-3, 64 * 1024 if mmap else 32 << 20)  # M_MMAP_THRESHOLD (glibc's largest)
    libc.malloc_trim(0)


def _reset_cpu_peak() -> int:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _rss_kb("VmRSS")


def _peak_bytes(fn, device) -> int | None:
    """Extra peak memory of one call of `fn` (see the module docstring for the method)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    try:
        base = _reset_cpu_peak()
    except OSError:
        return None
    fn()
    return (_rss_kb("VmHWM") - base) * 1024


def _backend_impl(name: str) -> Callable[..., torch.Tensor]:
    """`fn(*msda_args)` running MSDA on backend `name` (the reference is called directly)."""
    if name == "reference":
        return ms_deform_attn_reference

    def call(*msda_args):
        with using("msda", name):
            return multi_scale_deformable_attention(*msda_args)
    return call


def _mb(peak: int | None) -> float | None:
    return None if peak is None else round(peak / 2**20, 1)


def _device(args: argparse.Namespace) -> torch.device:
    """The benchmark's device; a one-line OpError for CUDA where there is none."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OpError("msda benchmark: --device cuda needs a usable CUDA GPU and there is none "
                      "here; run it on a GPU machine (docs/BENCHMARKS.md has the command)")
    return device


def _kernel_backends(wanted: list[str], device: torch.device) -> tuple[list[str], dict[str, str]]:
    """(the backends of `wanted` that can run on `device`, {backend: why not} for the others);
    OpError if none can."""
    unavailable = {b: r for b in wanted if (r := backend_unavailable(b, device.type))}
    names = [b for b in wanted if b not in unavailable]
    if not names:
        raise OpError(f"msda benchmark: no MSDA kernel can run on {device.type} here "
                      f"({'; '.join(f'{b}: {r}' for b, r in unavailable.items())}); "
                      "see docs/ops.md")
    return names, unavailable


class _Problem:
    """The MSDA inputs (value, shapes, starts, loc, attn), the output gradient and the leaves
    that receive gradients; `step(impl, backward)` is one timed call."""

    def __init__(self, tensors: list[torch.Tensor]):
        value, self.shapes, self.starts, loc, attn, self.grad = tensors
        self.queries = int(loc.shape[1])  # loc: [N, Lq, M, L, P, 2]
        self.leaves = [t.requires_grad_() for t in (value, loc, attn)]

    @property
    def msda_args(self) -> tuple[torch.Tensor, ...]:
        value, loc, attn = self.leaves
        return value, self.shapes, self.starts, loc, attn

    def clear_grads(self) -> None:
        for t in self.leaves:
            t.grad = None

    def step(self, impl: Callable[..., torch.Tensor], backward: bool) -> Callable[[], None]:
        """Forward (no autograd) or forward+backward of `impl`, gradients cleared first."""
        def call() -> None:
            self.clear_grads()
            if backward:
                impl(*self.msda_args).backward(self.grad)
            else:
                with torch.no_grad():
                    impl(*self.msda_args)
        return call


def _max_abs_diffs(impls: dict[str, Callable], kernel_names: list[str],
                   problem: _Problem) -> dict[str, float]:
    """Largest |kernel - reference| of the forward output, per kernel backend."""
    with torch.no_grad():
        ref = impls["reference"](*problem.msda_args)
        return {name: (impls[name](*problem.msda_args) - ref).abs().max().item()
                for name in kernel_names}


def _peaks(impls: dict[str, Callable], problem: _Problem,
           device: torch.device) -> dict[str, int | None]:
    """Extra peak memory of one forward+backward per backend (None where it cannot be read)."""
    peaks = {}
    for name, impl in impls.items():
        problem.clear_grads()  # the previous run's gradients must not sit in the baseline
        peaks[name] = _peak_bytes(problem.step(impl, backward=True), device)
    return peaks


def _backward(med: dict[str, float], name: str) -> float:
    """The backward's time alone: median forward + backward less median forward."""
    return med[f"{name}_fwd_bwd"] - med[f"{name}_fwd"]


def _ratios(med: dict[str, float], peak: dict[str, int | None], kernel_names: list[str]) -> dict:
    """The JSON keys of the timings (ms, speed-ups) and memory (MB, ratios)."""
    main = kernel_names[0]
    return {
        **{f"{k}_ms": round(v * 1e3, 2) for k, v in med.items()},
        **{f"forward_speedup_{n}": round(med["reference_fwd"] / med[f"{n}_fwd"], 3)
           for n in kernel_names},
        **{f"speedup_{n}": round(med["reference_fwd_bwd"] / med[f"{n}_fwd_bwd"], 3)
           for n in kernel_names},
        **{f"backward_speedup_{n}": round(_backward(med, "reference") / _backward(med, n), 3)
           for n in kernel_names},
        "speedup": round(med["reference_fwd_bwd"] / med[f"{main}_fwd_bwd"], 3),
        **{f"{n}_peak_mb": _mb(p) for n, p in peak.items()},
        **{f"memory_ratio_{n}": (None if not peak[n] or peak["reference"] is None
                                 else round(peak["reference"] / peak[n], 3))
           for n in kernel_names},
    }


def run(args: argparse.Namespace) -> dict:
    device = _device(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    kernel_names, unavailable = _kernel_backends(
        args.backends or list(DEFAULT_BACKENDS.get(device.type, ())), device)
    problem = _Problem(_inputs(args, device, getattr(torch, args.dtype)))
    impls = {name: _backend_impl(name) for name in [*kernel_names, "reference"]}
    max_diff = _max_abs_diffs(impls, kernel_names, problem)
    calls = {f"{name}_{kind}": problem.step(impl, backward)
             for name, impl in impls.items()
             for kind, backward in (("fwd", False), ("fwd_bwd", True))}
    if device.type == "cpu":
        _set_large_blocks(mmap=True)
    peaks = _peaks(impls, problem, device)
    if device.type == "cpu":
        _set_large_blocks(mmap=False)
    med = time_rounds(calls, args.warmup, args.repeats, device, grad=True).medians()
    result = {
        "device": str(device), "dtype": args.dtype, "threads": torch.get_num_threads(),
        "batch": args.batch, "levels": [list(s) for s in problem.shapes.tolist()],
        "queries": problem.queries, "heads": args.heads, "dim": args.dim,
        "points": args.points, "locations": args.locations, "repeats": args.repeats,
        "backends": kernel_names, "unavailable": unavailable,
        **_ratios(med, peaks, kernel_names),
        **{f"max_abs_diff_{n}": d for n, d in max_diff.items()},
        "target": "speedup >= 2.0",
    }
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    return result
