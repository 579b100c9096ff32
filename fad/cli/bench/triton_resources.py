"""Registers, spills and estimated occupancy of the Triton MSDA kernels, per specialization.

No GPU needed: each specialization is compiled ahead of time for sm_80 and sm_90 exactly as a
launch would compile it (the launchers' own arguments, on `meta` tensors, go through Triton's
runtime binder, so alignment hints, ints equal to 1, block sizes and `num_warps` are those of a
real launch), and the PTX is assembled by Triton's bundled `ptxas -v` to read registers and
spill bytes. Shapes: a Deformable DETR decoder layer (batch 2, 300 queries, 8 heads, 4 levels
100x150 ... 13x19, 4 points) with head dim D in `--head-dims` and dtypes in `--dtypes`.

JSON keys: `specializations`, a list of {kernel: forward|backward, arch: sm_80|sm_90, dtype,
head_dim, registers, spill_bytes (stores + loads), stack_bytes, num_warps, block_q, programs
(grid size at the decoder shape), occupancy (estimated: resident warps / 64 from registers
alone)}; `max_registers` and `spilling` (the specializations with spill_bytes > 0). Compiles are
cached by Triton (~/.triton/cache) and the ptxas results by PTX hash in `--cache FILE`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import torch

from fad.errors import FadError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
          "fp64": torch.float64}
DECODER = {"batch": 2, "queries": 300, "heads": 8, "points": 4,
           "levels": [(100, 150), (50, 75), (25, 38), (13, 19)]}
REGS_PER_SM, MAX_WARPS_PER_SM, MAX_BLOCKS_PER_SM = 65536, 64, 32
_PTXAS = re.compile(r"Used (\d+) registers")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtypes", default="fp32,bf16,fp16,fp64", help="comma-separated")
    parser.add_argument("--head-dims", default="1,32,64,256", help="comma-separated D values")
    parser.add_argument("--archs", default="80,90", help="comma-separated compute capabilities")
    parser.add_argument("--kernels", default="forward,backward", help="comma-separated")
    parser.add_argument("--cache", default=str(Path.home() / ".cache/fad/triton_resources.json"),
                        metavar="FILE", help="ptxas results by PTX hash ('' = no cache)")


def decoder_inputs(dtype: torch.dtype, head_dim: int) -> tuple:
    """(value, spatial_shapes, level_start_index, loc, attn) on the meta device at the decoder
    shape: the specialization a launch of that shape compiles, without memory."""
    shapes = torch.tensor(DECODER["levels"], dtype=torch.int64)
    starts = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
    n, lq, m, p, L = (DECODER["batch"], DECODER["queries"], DECODER["heads"], DECODER["points"],
                      len(DECODER["levels"]))
    s = int(shapes.prod(1).sum())
    meta = {"device": "meta", "dtype": dtype}
    return (torch.empty(n, s, m, head_dim, **meta), shapes.to("meta"), starts.to("meta"),
            torch.empty(n, lq, m, L, p, 2, **meta), torch.empty(n, lq, m, L, p, **meta))


def _launch(kernel_name: str, dtype: torch.dtype, head_dim: int) -> tuple:
    """(jit kernel, args, kwargs, grid) of the launch at the decoder shape."""
    from fad.ops.msda import triton as msda_triton

    value, shapes, starts, loc, attn = decoder_inputs(dtype, head_dim)
    n, lq, m = loc.shape[:3]
    if kernel_name == "forward":
        out = torch.empty(n, lq, m * head_dim, device="meta", dtype=dtype)
        return msda_triton.forward_launch(value, shapes, starts, loc, attn, out)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    return msda_triton.backward_launch(
        torch.empty(n, lq, m * head_dim, device="meta", dtype=dtype), value, shapes, starts, loc,
        attn, torch.empty(value.shape, device="meta", dtype=acc), torch.empty_like(loc),
        torch.empty_like(attn))


def compile_launch(kernel, args: tuple, kwargs: dict, arch: int):
    """Compile `kernel[grid](*args, **kwargs)` for sm_<arch> as Triton's launcher would."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound,
                                                              specialization, options)
    return triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                          options=options.__dict__)


def ptxas_resources(ptx: str, arch: int) -> dict:
    """{registers, spill_bytes, stack_bytes} of `ptx` by Triton's ptxas with its flags."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        Path(src).write_text(ptx)
        proc = subprocess.run(
            [get_ptxas(arch).path, "-lineinfo", "-v", "--regAllocOptLevel=2",
             f"--gpu-name={sm_arch_from_capability(arch)}", src, "-o", src + ".o"],
            capture_output=True, text=True, check=False)
    regs, spill = _PTXAS.search(proc.stderr), _SPILL.search(proc.stderr)
    if proc.returncode or not regs or not spill:
        raise FadError(f"triton_resources: ptxas failed for sm_{arch}: {proc.stderr[-500:]}")
    stack, stores, loads = (int(x) for x in spill.groups())
    return {"registers": int(regs.group(1)), "spill_bytes": stores + loads, "stack_bytes": stack}


def occupancy(registers: int, num_warps: int) -> float:
    """Resident warps / 64 on an sm_80/sm_90 SM from registers alone (allocation: 8 registers
    per thread granularity, whole programs of `num_warps` warps)."""
    per_warp = -(-registers // 8) * 8 * 32
    warps = min(MAX_WARPS_PER_SM, REGS_PER_SM // per_warp)
    blocks = min(MAX_BLOCKS_PER_SM, warps // num_warps)
    return round(blocks * num_warps / MAX_WARPS_PER_SM, 3)


def _load_cache(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text()) if path else {}
    except (OSError, ValueError):
        return {}


def run(args: argparse.Namespace) -> dict:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise FadError("triton_resources compiles for CUDA: unset TRITON_INTERPRET")
    from fad.ops.msda.triton import triton_unavailable

    reason = triton_unavailable()
    if reason is not None:
        raise FadError(f"triton_resources: {reason}")
    cache = _load_cache(args.cache)
    rows = []
    for kernel_name in args.kernels.split(","):
        for dtype_name in args.dtypes.split(","):
            if dtype_name not in DTYPES:
                raise FadError(f"triton_resources: unknown dtype {dtype_name!r}; "
                               f"pick from {', '.join(DTYPES)}")
            for head_dim in (int(d) for d in args.head_dims.split(",")):
                kernel, launch_args, kwargs, grid = _launch(kernel_name, DTYPES[dtype_name],
                                                            head_dim)
                for arch in (int(a) for a in args.archs.split(",")):
                    ptx = compile_launch(kernel, launch_args, kwargs, arch).asm["ptx"]
                    key = f"{arch}:{hashlib.sha256(ptx.encode()).hexdigest()}"
                    if key not in cache:
                        cache[key] = ptxas_resources(ptx, arch)
                    warps = kwargs.get("num_warps", 4)
                    rows.append({"kernel": kernel_name, "arch": f"sm_{arch}",
                                 "dtype": dtype_name, "head_dim": head_dim, **cache[key],
                                 "num_warps": warps, "block_q": kwargs["BLOCK_Q"],
                                 "programs": grid[0] * grid[1],
                                 "occupancy": occupancy(cache[key]["registers"], warps)})
    if args.cache:
        Path(args.cache).parent.mkdir(parents=True, exist_ok=True)
        Path(args.cache).write_text(json.dumps(cache))
    return {"shape": {**DECODER, "levels": [list(x) for x in DECODER["levels"]]},
            "specializations": rows, "max_registers": max(r["registers"] for r in rows),
            "spilling": [f"{r['kernel']} {r['arch']} {r['dtype']} D={r['head_dim']}"
                         for r in rows if r["spill_bytes"]]}
