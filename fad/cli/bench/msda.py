"""MSDA forward+backward: every available backend vs the grid_sample reference, side by side.

Backends timed: on CUDA `triton`, `cuda` (the C++ CUDA kernel) and `reference`; on the CPU
`cpp` and `reference` (`--backends` picks others, e.g. `triton` on the CPU under
TRITON_INTERPRET=1, which is far too slow to time). A backend that cannot run here is listed
under `unavailable` with the reason. `speedup_<backend>` = reference / backend (fwd+bwd);
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
gradients. glibc is told to serve blocks >= 64 KiB by mmap (mallopt M_MMAP_THRESHOLD), so freed
tensors leave the RSS at once and earlier runs do not hide later peaks. `memory_ratio` =
reference / kernel.
"""
from __future__ import annotations

import argparse
import ctypes
import math
import statistics
import time

import torch

from fad.errors import OpError
from fad.ops import kernels, ms_deform_attn_reference, multi_scale_deformable_attention
from fad.ops.msda import backend_unavailable

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


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"msda benchmark: no {field} in /proc/self/status")


def _mmap_large_blocks() -> None:
    """Make glibc return freed blocks >= 64 KiB to the OS at once (M_MMAP_THRESHOLD = -3)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, 64 * 1024)
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
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    try:
        base = _reset_cpu_peak()
    except OSError:
        return None
    fn()
    return (_rss_kb("VmHWM") - base) * 1024


def _backend_impl(name: str):
    """`fn(*msda_args)` running MSDA on backend `name` (the reference is called directly)."""
    if name == "reference":
        return ms_deform_attn_reference

    def call(*msda_args):
        with kernels.using("msda", name):
            return multi_scale_deformable_attention(*msda_args)
    return call


def _mb(peak: int | None) -> float | None:
    return None if peak is None else round(peak / 2**20, 1)


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OpError("msda benchmark: --device cuda needs a usable CUDA GPU and there is none "
                      "here; run it on a GPU machine (docs/BENCHMARKS.md has the command)")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    if device.type == "cpu":
        _mmap_large_blocks()
    wanted = args.backends or DEFAULT_BACKENDS.get(device.type, ())
    unavailable = {b: r for b in wanted if (r := backend_unavailable(b, device.type))}
    kernel_names = [b for b in wanted if b not in unavailable]
    if not kernel_names:
        raise OpError(f"msda benchmark: no MSDA kernel can run on {device.type} here "
                      f"({'; '.join(f'{b}: {r}' for b, r in unavailable.items())}); "
                      "see docs/ops.md")
    value, shapes, starts, loc, attn, grad = _inputs(args, device, dtype)
    leaves = [t.requires_grad_() for t in (value, loc, attn)]
    impls = {name: _backend_impl(name) for name in [*kernel_names, "reference"]}

    def step(name: str, backward: bool = True):
        def call():
            for t in leaves:
                t.grad = None
            if backward:
                impls[name](value, shapes, starts, loc, attn).backward(grad)
            else:
                with torch.no_grad():
                    impls[name](value, shapes, starts, loc, attn)
        return call

    with torch.no_grad():
        ref = impls["reference"](value, shapes, starts, loc, attn)
        max_diff = {name: (impls[name](value, shapes, starts, loc, attn) - ref).abs().max().item()
                    for name in kernel_names}
    times = {f"{name}_{kind}": [] for name in impls for kind in ("fwd", "fwd_bwd")}
    for i in range(args.warmup + args.repeats):
        for name in impls:
            for kind, backward in (("fwd", False), ("fwd_bwd", True)):
                call = step(name, backward)
                _sync(device)
                t0 = time.perf_counter()
                call()
                _sync(device)
                if i >= args.warmup:
                    times[f"{name}_{kind}"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    peak = {}
    for name in impls:
        for t in leaves:
            t.grad = None  # the previous run's gradients must not sit in the baseline
        peak[name] = _peak_bytes(step(name), device)
    main = kernel_names[0]
    result = {
        "device": str(device), "dtype": args.dtype, "threads": torch.get_num_threads(),
        "batch": args.batch, "levels": [list(s) for s in shapes.tolist()],
        "queries": int(loc.shape[1]), "heads": args.heads, "dim": args.dim,
        "points": args.points, "locations": args.locations, "repeats": args.repeats,
        "backends": kernel_names, "unavailable": unavailable,
        **{f"{k}_ms": round(v * 1e3, 2) for k, v in med.items()},
        **{f"forward_speedup_{n}": round(med["reference_fwd"] / med[f"{n}_fwd"], 3)
           for n in kernel_names},
        **{f"speedup_{n}": round(med["reference_fwd_bwd"] / med[f"{n}_fwd_bwd"], 3)
           for n in kernel_names},
        "speedup": round(med["reference_fwd_bwd"] / med[f"{main}_fwd_bwd"], 3),
        **{f"{n}_peak_mb": _mb(peak[n]) for n in impls},
        **{f"memory_ratio_{n}": (None if not peak[n] or peak["reference"] is None
                                 else round(peak["reference"] / peak[n], 3))
           for n in kernel_names},
        **{f"max_abs_diff_{n}": d for n, d in max_diff.items()},
        "target": "speedup >= 2.0",
    }
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    return result
