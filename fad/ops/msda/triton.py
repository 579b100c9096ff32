"""Triton kernels of multi-scale deformable attention (MSDA): forward and backward.

The GPU path of `fad::ms_deform_attn`; with the environment variable TRITON_INTERPRET=1 the same
kernels run on CPU tensors through Triton's interpreter, which is how the tests reach them.

Sampling convention (as `ms_deform_attn_reference` and csrc/msda): a location (x, y) in [0, 1]
sits at pixel coordinates (x * W - 0.5, y * H - 0.5), pixel centres at integers; the four
bilinear corners outside the map read zero.

Design (see docs/msda_triton.md): grid (ceil(Lq / BLOCK_Q), N * M); a program owns BLOCK_Q
queries of one (image, head) and a BLOCK_D >= D channel tile (power of two, masked). D, the
level count L and the point count P are compile-time constants: the level loop is unrolled,
the point loop is not (unrolled, sm_90's ptxas hoists all 64 gathers: 242 registers). Tiles
hold at most 4 elements a thread (2 for float64 and wide backwards), `block_config`; offsets
are int32 unless a tensor exceeds 2**31 - 1 elements (INDEX64). Accumulation is float32
(float64 for float64 inputs). The backward adds grad_value with atomics into a float32
(float64) buffer that is cast to the input dtype at the end; program i starts at level i % L.
Launches run on the inputs' device. `fad-bench triton_resources` compiles every launch
specialization for sm_80/sm_90 and reads its registers and spills (table in the doc).

Triton is optional: importing this module never fails; launching without triton raises.
TRITON_INTERPRET=1 must be set before anything imports triton (torch.library does): triton
wraps its own library (tl.sum, tl.zeros) for the interpreter at import. Our kernels are wrapped
by `triton.jit` on first launch; a launch whose TRITON_INTERPRET disagrees with the mode triton
was imported in raises a clear error instead of failing inside triton.
"""
from __future__ import annotations

import contextlib
import functools

import torch
from torch import Tensor

from fad.errors import OpError

try:
    import triton
    import triton.language as tl
except ImportError:  # the kernels are plain functions until `_kernels` wraps them
    triton = None
    tl = None
_point = None  # `_point_setup` wrapped by triton.jit, set with the kernels by `_kernels`

_SUPPORTED = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INT32_MAX = 2**31 - 1  # larger tensors are indexed with int64 offsets (INDEX64)


def _point_setup(loc_ptr, attn_ptr, j, q_mask, height, width, ACC: tl.constexpr):
    """Per query of the block: (attention a, pixel floors h0/w0 int32, fractions lh/lw, live)
    of point row j [BLOCK_Q] (int64 index into attn; loc at 2j, 2j + 1)."""
    x = tl.load(loc_ptr + 2 * j, mask=q_mask, other=0).to(ACC)
    y = tl.load(loc_ptr + 2 * j + 1, mask=q_mask, other=0).to(ACC)
    a = tl.load(attn_ptr + j, mask=q_mask, other=0).to(ACC)
    w_im = x * width.to(ACC) - 0.5
    h_im = y * height.to(ACC) - 0.5
    live = q_mask & (h_im > -1) & (w_im > -1) & (h_im < height) & (w_im < width)
    # dead points (outside, NaN) get coordinates 0 so the int cast below is defined
    w_im = tl.where(live, w_im, 0.0)
    h_im = tl.where(live, h_im, 0.0)
    w_floor = tl.floor(w_im)
    h_floor = tl.floor(h_im)
    return a, h_floor.to(tl.int32), w_floor.to(tl.int32), h_im - h_floor, w_im - w_floor, live


def _msda_forward_kernel(
    value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr, out_ptr,
    num_tokens, num_queries, num_heads,
    HEAD_DIM: tl.constexpr, NUM_LEVELS: tl.constexpr, NUM_POINTS: tl.constexpr,
    ACC: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr, INDEX64: tl.constexpr,
):
    """out[n, q, m * D + d] = sum_{l, p} attn * bilinear(value[n, level l, m, d], loc).

    Program (i, j): queries i * BLOCK_Q ... + BLOCK_Q of image j // M, head j % M.
    value [N, S, M, D], loc [N, Lq, M, L, P, 2], attn [N, Lq, M, L, P], out [N, Lq, M * D].
    Levels and points are compile-time constants: the loops are unrolled.
    """
    idx: tl.constexpr = tl.int64 if INDEX64 else tl.int32  # offsets; int32 saves registers
    pid_nm = tl.program_id(1)
    n = (pid_nm // num_heads).to(idx)
    m = (pid_nm % num_heads).to(idx)
    q = tl.program_id(0).to(idx) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_mask = q < num_queries
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM
    item = (n * num_queries + q) * num_heads + m  # row of (n, q, m) in [N * Lq * M]
    value_nm = value_ptr + (n * num_tokens * num_heads + m) * HEAD_DIM
    row_stride = num_heads * HEAD_DIM
    acc = tl.zeros((BLOCK_Q, BLOCK_D), dtype=ACC)
    for level in tl.static_range(NUM_LEVELS):
        height = tl.load(shapes_ptr + 2 * level).to(tl.int32)
        width = tl.load(shapes_ptr + 2 * level + 1).to(tl.int32)
        start = tl.load(starts_ptr + level).to(idx)
        for point in range(NUM_POINTS):
            j = item * (NUM_LEVELS * NUM_POINTS) + (level * NUM_POINTS + point)
            a, h0, w0, lh, lw, live = _point(loc_ptr, attn_ptr, j, q_mask, height,
                                                      width, ACC)
            for corner in tl.static_range(4):
                yy = h0 + corner // 2
                xx = w0 + corner % 2
                wy = lh if corner // 2 == 1 else 1 - lh
                wx = lw if corner % 2 == 1 else 1 - lw
                inside = live & (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
                rows = start + (yy * width + xx).to(idx)
                v = tl.load(value_nm + rows[:, None] * row_stride + d[None, :],
                            mask=inside[:, None] & d_mask[None, :], other=0).to(ACC)
                acc += (a * wy * wx)[:, None] * v
    out_ptrs = out_ptr + item[:, None] * HEAD_DIM + d[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty),
             mask=q_mask[:, None] & d_mask[None, :])


def _msda_backward_kernel(
    grad_out_ptr, value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr,
    grad_value_ptr, grad_loc_ptr, grad_attn_ptr,
    num_tokens, num_queries, num_heads,
    HEAD_DIM: tl.constexpr, NUM_LEVELS: tl.constexpr, NUM_POINTS: tl.constexpr,
    ACC: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr, INDEX64: tl.constexpr,
):
    """Gradients of `_msda_forward_kernel` for the same program tiling.

    grad_out [N, Lq, M * D]; grad_value [N, S, M, D] in ACC, accumulated with atomics (it must
    start at zero); grad_loc [N, Lq, M, L, P, 2] and grad_attn [N, Lq, M, L, P] (contiguous)
    are written once per point (zero for points that sample nothing). Program i starts at level
    i % L, so the programs' atomics on the small coarse levels are spread over time.
    """
    idx: tl.constexpr = tl.int64 if INDEX64 else tl.int32  # offsets; int32 saves registers
    pid_q = tl.program_id(0)
    pid_nm = tl.program_id(1)
    n = (pid_nm // num_heads).to(idx)
    m = (pid_nm % num_heads).to(idx)
    q = pid_q.to(idx) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_mask = q < num_queries
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM
    item = (n * num_queries + q) * num_heads + m
    nm_offset = (n * num_tokens * num_heads + m) * HEAD_DIM
    row_stride = num_heads * HEAD_DIM
    tile_mask = q_mask[:, None] & d_mask[None, :]
    grad_out = tl.load(grad_out_ptr + item[:, None] * HEAD_DIM + d[None, :], mask=tile_mask,
                       other=0).to(ACC)
    for step in tl.static_range(NUM_LEVELS):
        level = (step + pid_q) % NUM_LEVELS
        height = tl.load(shapes_ptr + 2 * level).to(tl.int32)
        width = tl.load(shapes_ptr + 2 * level + 1).to(tl.int32)
        start = tl.load(starts_ptr + level).to(idx)
        for point in range(NUM_POINTS):
            j = item * (NUM_LEVELS * NUM_POINTS) + (level * NUM_POINTS + point)
            a, h0, w0, lh, lw, live = _point(loc_ptr, attn_ptr, j, q_mask, height,
                                                      width, ACC)
            grad_a = tl.zeros((BLOCK_Q,), dtype=ACC)
            grad_w = tl.zeros((BLOCK_Q,), dtype=ACC)  # d out / d w_im, before the factor a
            grad_h = tl.zeros((BLOCK_Q,), dtype=ACC)
            for corner in tl.static_range(4):
                yy = h0 + corner // 2
                xx = w0 + corner % 2
                wy = lh if corner // 2 == 1 else 1 - lh
                wx = lw if corner % 2 == 1 else 1 - lw
                sign_y = 1.0 if corner // 2 == 1 else -1.0  # d wy / d h_im
                sign_x = 1.0 if corner % 2 == 1 else -1.0
                inside = live & (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
                rows = start + (yy * width + xx).to(idx)
                offsets = nm_offset + rows[:, None] * row_stride + d[None, :]
                corner_mask = inside[:, None] & d_mask[None, :]
                v = tl.load(value_ptr + offsets, mask=corner_mask, other=0).to(ACC)
                dot = tl.sum(grad_out * v, axis=1)
                grad_a += wy * wx * dot
                grad_w += wy * sign_x * dot
                grad_h += sign_y * wx * dot
                tl.atomic_add(grad_value_ptr + offsets, (a * wy * wx)[:, None] * grad_out,
                              mask=corner_mask, sem="relaxed")
            tl.store(grad_attn_ptr + j, grad_a.to(grad_attn_ptr.dtype.element_ty), mask=q_mask)
            grad_x = a * grad_w * width.to(ACC)
            grad_y = a * grad_h * height.to(ACC)
            tl.store(grad_loc_ptr + 2 * j, grad_x.to(grad_loc_ptr.dtype.element_ty), mask=q_mask)
            tl.store(grad_loc_ptr + 2 * j + 1, grad_y.to(grad_loc_ptr.dtype.element_ty),
                     mask=q_mask)


@functools.cache
def _kernels(interpret: bool) -> tuple:
    """(forward, backward) wrapped by `triton.jit` for the interpreter mode in force, which
    triton.jit reads from TRITON_INTERPRET; `interpret` keys the cache on that mode."""
    del interpret
    global _point  # the kernels call it by this module-level name
    _point = triton.jit(_point_setup)
    return triton.jit(_msda_forward_kernel), triton.jit(_msda_backward_kernel)


def _interpret_mode() -> bool:
    """TRITON_INTERPRET now; raises unless triton was imported in the same mode."""
    from triton.runtime.interpreter import InterpretedFunction

    interpret = bool(triton.knobs.runtime.interpret)
    imported_interpreted = isinstance(tl.zeros, InterpretedFunction)
    if interpret != imported_interpreted:
        raise OpError(
            f"fad.ops.msda.triton: TRITON_INTERPRET is {'on' if interpret else 'off'} but triton "
            f"was imported with it {'on' if imported_interpreted else 'off'}; set "
            "TRITON_INTERPRET=1 (CPU tensors) before anything imports triton, e.g. in the "
            "environment of the process, or leave it unset for CUDA tensors")
    return interpret


def triton_unavailable() -> str | None:
    """Why the Triton kernels cannot be launched here (triton missing), or None when they can."""
    if triton is None:
        return ("the triton package is not installed (it comes with torch's CUDA wheels; or "
                "pip install triton)")
    return None


def _launch_setup(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                  sampling_locations: Tensor, attention_weights: Tensor, backward: bool
                  ) -> tuple[tuple, dict, tuple]:
    """Kernels, the constexpr kwargs and the grid for these inputs; raises when unsupported."""
    reason = triton_unavailable()
    if reason is not None:
        raise OpError(f"fad.ops.msda.triton: {reason}; pick another MSDA backend")
    if spatial_shapes.dtype != torch.int64 or level_start_index.dtype != torch.int64:
        raise OpError(f"fad.ops.msda.triton: spatial_shapes and level_start_index must be int64, "
                      f"got {spatial_shapes.dtype} and {level_start_index.dtype}")
    if value.dtype not in _SUPPORTED or not (
            value.dtype == sampling_locations.dtype == attention_weights.dtype):
        raise OpError(f"fad.ops.msda.triton: value, sampling_locations and attention_weights "
                      f"must share one of float16/bfloat16/float32/float64, got {value.dtype}, "
                      f"{sampling_locations.dtype}, {attention_weights.dtype}")
    n, _, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = sampling_locations.shape
    block_q, block_d, num_warps = block_config(d, lq, value.dtype, backward)
    meta = {"HEAD_DIM": d, "NUM_LEVELS": num_levels, "NUM_POINTS": num_points,
            "ACC": tl.float64 if value.dtype == torch.float64 else tl.float32,
            "BLOCK_Q": block_q, "BLOCK_D": block_d, "num_warps": num_warps,
            "INDEX64": max(value.numel(), sampling_locations.numel(), n * lq * m * d) > _INT32_MAX}
    return _kernels(_interpret_mode()), meta, (triton.cdiv(lq, block_q), n * m)


def block_config(head_dim: int, num_queries: int, dtype: torch.dtype,
                 backward: bool = False) -> tuple[int, int, int]:
    """(BLOCK_Q, BLOCK_D, num_warps) of a launch. BLOCK_D = next power of two >= D (masked);
    a [BLOCK_Q, BLOCK_D] tile holds at most 4 elements per thread (2 for float64, and for the
    backward at BLOCK_D >= 256, whose cross-warp sums spilled at 4 on sm_90; 1 for the float64
    backward at BLOCK_D >= 256, which spilled 16 bytes at 2 on sm_80) and at most one query per
    thread; at least 4 warps, as many as that budget needs up to 16 (BLOCK_Q = 1 there). These
    budgets keep the specializations of docs/msda_triton.md free of spills. Small tiles also
    fill the GPU: a decoder layer (300 queries, batch 2, 8 heads, D = 32) is 304 programs."""
    block_d = triton.next_power_of_2(head_dim)
    wide_backward = backward and block_d >= 256
    if dtype == torch.float64 and wide_backward:
        per_thread = 1
    elif dtype == torch.float64 or wide_backward:
        per_thread = 2
    else:
        per_thread = 4
    num_warps = min(16, max(4, block_d // (32 * per_thread)))
    threads = 32 * num_warps
    block_q = max(1, min(threads, threads * per_thread // block_d,
                         triton.next_power_of_2(num_queries)))
    return block_q, block_d, num_warps


def _on_device(tensor: Tensor) -> contextlib.AbstractContextManager:
    """Make `tensor`'s CUDA device current for a launch (Triton launches on the current one)."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def msda_triton_forward(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """MSDA forward by the Triton kernel (semantics of `fad.ops.ms_deform_attn_reference`).

    Args:
        value: [N, S, M, D], S = sum_l H_l * W_l; float16/bfloat16/float32/float64.
        spatial_shapes: [L, 2] int64 (H_l, W_l), on value's device.
        level_start_index: [L] int64 offset of each level in S, on value's device.
        sampling_locations: [N, Lq, M, L, P, 2] (x, y) in [0, 1], value's dtype.
        attention_weights: [N, Lq, M, L, P], value's dtype.

    Returns:
        [N, Lq, M * D] in value's dtype (accumulated in float32, float64 for float64).

    Shapes and level bounds are checked by the caller (the `fad::ms_deform_attn` op); this
    function checks only the dtypes (int64 shapes) and that triton is importable.
    """
    n, _, m, d = value.shape
    out = value.new_zeros(n, sampling_locations.shape[1], m * d)
    if out.numel() == 0:
        return out
    kernel, args, meta, grid = forward_launch(value, spatial_shapes, level_start_index,
                                              sampling_locations, attention_weights, out)
    with _on_device(value):
        kernel[grid](*args, **meta)
    return out


def forward_launch(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                   sampling_locations: Tensor, attention_weights: Tensor, out: Tensor
                   ) -> tuple[object, tuple, dict, tuple]:
    """(kernel, positional args, constexpr/launch kwargs, grid) of the forward launch that
    writes `out` [N, Lq, M * D]; `fad-bench triton_resources` compiles exactly these."""
    (forward, _), meta, grid = _launch_setup(value, spatial_shapes, level_start_index,
                                             sampling_locations, attention_weights, False)
    _, s, m, _ = value.shape
    args = (value.contiguous(), spatial_shapes.contiguous(), level_start_index.contiguous(),
            sampling_locations.contiguous(), attention_weights.contiguous(), out,
            s, sampling_locations.shape[1], m)
    return forward, args, meta, grid


def msda_triton_backward(
    grad_output: Tensor,
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of `msda_triton_forward` by the Triton kernel.

    Args:
        grad_output: [N, Lq, M * D] in value's dtype; the other arguments as in
            `msda_triton_forward`.

    Returns:
        (grad_value [N, S, M, D], grad_sampling_locations [N, Lq, M, L, P, 2],
        grad_attention_weights [N, Lq, M, L, P]), each in value's dtype. grad_value is summed
        in float32 (float64 for float64) with atomics, so its last bits vary from run to run
        on a GPU.
    """
    acc_dtype = torch.float64 if value.dtype == torch.float64 else torch.float32
    grad_value = torch.zeros(value.shape, dtype=acc_dtype, device=value.device)
    # contiguous whatever the inputs' strides: the kernel writes them densely
    grad_loc = torch.zeros(sampling_locations.shape, dtype=value.dtype, device=value.device)
    grad_attn = torch.zeros(attention_weights.shape, dtype=value.dtype, device=value.device)
    if grad_attn.numel() == 0 or value.shape[3] == 0:
        return grad_value.to(value.dtype), grad_loc, grad_attn
    kernel, args, meta, grid = backward_launch(grad_output, value, spatial_shapes,
                                               level_start_index, sampling_locations,
                                               attention_weights, grad_value, grad_loc,
                                               grad_attn)
    with _on_device(value):
        kernel[grid](*args, **meta)
    return grad_value.to(value.dtype), grad_loc, grad_attn


def backward_launch(grad_output: Tensor, value: Tensor, spatial_shapes: Tensor,
                    level_start_index: Tensor, sampling_locations: Tensor,
                    attention_weights: Tensor, grad_value: Tensor, grad_loc: Tensor,
                    grad_attn: Tensor) -> tuple[object, tuple, dict, tuple]:
    """(kernel, positional args, constexpr/launch kwargs, grid) of the backward launch into the
    zeroed gradient buffers; `fad-bench triton_resources` compiles exactly these."""
    (_, backward), meta, grid = _launch_setup(value, spatial_shapes, level_start_index,
                                              sampling_locations, attention_weights, True)
    _, s, m, _ = value.shape
    args = (grad_output.contiguous(), value.contiguous(), spatial_shapes.contiguous(),
            level_start_index.contiguous(), sampling_locations.contiguous(),
            attention_weights.contiguous(), grad_value, grad_loc, grad_attn,
            s, sampling_locations.shape[1], m)
    return backward, args, meta, grid
