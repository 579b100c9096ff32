"""Triton kernels of multi-scale deformable attention (MSDA): forward and backward.

The GPU path of `fad::ms_deform_attn`; with the environment variable TRITON_INTERPRET=1 the same
kernels run on CPU tensors through Triton's interpreter, which is how the tests reach them.

Sampling convention (as `ms_deform_attn_reference` and csrc/msda): a location (x, y) in [0, 1]
sits at pixel coordinates (x * W - 0.5, y * H - 0.5), pixel centres at integers; the four
bilinear corners outside the map read zero.

Design (see docs/msda_triton.md): grid (ceil(Lq / BLOCK_Q), N * M); a program owns BLOCK_Q
queries of one (image, head) and a BLOCK_D >= D channel tile (power of two, masked), and loops
over levels (shapes and starts read from the tensors) and points. Accumulation is float32
(float64 for float64 inputs). The backward adds grad_value with atomics into a float32 (float64)
buffer that is cast to the input dtype at the end.

Triton is optional: importing this module never fails; launching without triton raises.
TRITON_INTERPRET=1 must be set before anything imports triton (torch.library does): triton
wraps its own library (tl.sum, tl.zeros) for the interpreter at import. Our kernels are wrapped
by `triton.jit` on first launch; a launch whose TRITON_INTERPRET disagrees with the mode triton
was imported in raises a clear error instead of failing inside triton.
"""
from __future__ import annotations

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

_SUPPORTED = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_MAX_TILE = 2048  # BLOCK_Q * BLOCK_D elements per program


def _msda_forward_kernel(
    value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr, out_ptr,
    num_tokens, num_queries, num_heads, head_dim, num_levels, num_points,
    ACC: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """out[n, q, m * D + d] = sum_{l, p} attn * bilinear(value[n, level l, m, d], loc).

    Program (i, j): queries i * BLOCK_Q ... + BLOCK_Q of image j // M, head j % M.
    value [N, S, M, D], loc [N, Lq, M, L, P, 2], attn [N, Lq, M, L, P], out [N, Lq, M * D].
    """
    pid_nm = tl.program_id(1).to(tl.int64)
    n = pid_nm // num_heads
    m = pid_nm % num_heads
    q = tl.program_id(0).to(tl.int64) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_mask = q < num_queries
    d = tl.arange(0, BLOCK_D)
    d_mask = d < head_dim
    item = (n * num_queries + q) * num_heads + m  # row of (n, q, m) in [N * Lq * M]
    value_nm = value_ptr + (n * num_tokens * num_heads + m) * head_dim
    row_stride = num_heads * head_dim
    acc = tl.zeros((BLOCK_Q, BLOCK_D), dtype=ACC)
    for level in range(num_levels):
        height = tl.load(shapes_ptr + 2 * level)
        width = tl.load(shapes_ptr + 2 * level + 1)
        start = tl.load(starts_ptr + level)
        for point in range(num_points):
            j = item * (num_levels * num_points) + level * num_points + point
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
            lw = w_im - w_floor
            lh = h_im - h_floor
            for corner in tl.static_range(4):
                yy = h_floor.to(tl.int64) + corner // 2
                xx = w_floor.to(tl.int64) + corner % 2
                wy = lh if corner // 2 == 1 else 1 - lh
                wx = lw if corner % 2 == 1 else 1 - lw
                inside = live & (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
                rows = start + yy * width + xx
                v = tl.load(value_nm + rows[:, None] * row_stride + d[None, :],
                            mask=inside[:, None] & d_mask[None, :], other=0).to(ACC)
                acc += (a * wy * wx)[:, None] * v
    out_ptrs = out_ptr + item[:, None] * head_dim + d[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty),
             mask=q_mask[:, None] & d_mask[None, :])


def _msda_backward_kernel(
    grad_out_ptr, value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr,
    grad_value_ptr, grad_loc_ptr, grad_attn_ptr,
    num_tokens, num_queries, num_heads, head_dim, num_levels, num_points,
    ACC: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Gradients of `_msda_forward_kernel` for the same program tiling.

    grad_out [N, Lq, M * D]; grad_value [N, S, M, D] in ACC, accumulated with atomics (it must
    start at zero); grad_loc [N, Lq, M, L, P, 2] and grad_attn [N, Lq, M, L, P] are written once
    per point (zero for points that sample nothing).
    """
    pid_nm = tl.program_id(1).to(tl.int64)
    n = pid_nm // num_heads
    m = pid_nm % num_heads
    q = tl.program_id(0).to(tl.int64) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_mask = q < num_queries
    d = tl.arange(0, BLOCK_D)
    d_mask = d < head_dim
    item = (n * num_queries + q) * num_heads + m
    nm_offset = (n * num_tokens * num_heads + m) * head_dim
    row_stride = num_heads * head_dim
    tile_mask = q_mask[:, None] & d_mask[None, :]
    grad_out = tl.load(grad_out_ptr + item[:, None] * head_dim + d[None, :], mask=tile_mask,
                       other=0).to(ACC)
    for level in range(num_levels):
        height = tl.load(shapes_ptr + 2 * level)
        width = tl.load(shapes_ptr + 2 * level + 1)
        start = tl.load(starts_ptr + level)
        for point in range(num_points):
            j = item * (num_levels * num_points) + level * num_points + point
            x = tl.load(loc_ptr + 2 * j, mask=q_mask, other=0).to(ACC)
            y = tl.load(loc_ptr + 2 * j + 1, mask=q_mask, other=0).to(ACC)
            a = tl.load(attn_ptr + j, mask=q_mask, other=0).to(ACC)
            w_im = x * width.to(ACC) - 0.5
            h_im = y * height.to(ACC) - 0.5
            live = q_mask & (h_im > -1) & (w_im > -1) & (h_im < height) & (w_im < width)
            w_im = tl.where(live, w_im, 0.0)
            h_im = tl.where(live, h_im, 0.0)
            w_floor = tl.floor(w_im)
            h_floor = tl.floor(h_im)
            lw = w_im - w_floor
            lh = h_im - h_floor
            grad_a = tl.zeros((BLOCK_Q,), dtype=ACC)
            grad_w = tl.zeros((BLOCK_Q,), dtype=ACC)  # d out / d w_im, before the factor a
            grad_h = tl.zeros((BLOCK_Q,), dtype=ACC)
            for corner in tl.static_range(4):
                yy = h_floor.to(tl.int64) + corner // 2
                xx = w_floor.to(tl.int64) + corner % 2
                wy = lh if corner // 2 == 1 else 1 - lh
                wx = lw if corner % 2 == 1 else 1 - lw
                sign_y = 1.0 if corner // 2 == 1 else -1.0  # d wy / d h_im
                sign_x = 1.0 if corner % 2 == 1 else -1.0
                inside = live & (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
                offsets = nm_offset + (start + yy * width + xx)[:, None] * row_stride + d[None, :]
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
                  sampling_locations: Tensor, attention_weights: Tensor
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
    lq = sampling_locations.shape[1]
    block_d = triton.next_power_of_2(d)
    block_q = max(1, min(triton.next_power_of_2(lq), _MAX_TILE // block_d))
    acc = tl.float64 if value.dtype == torch.float64 else tl.float32
    return (_kernels(_interpret_mode()), {"ACC": acc, "BLOCK_Q": block_q, "BLOCK_D": block_d},
            (triton.cdiv(lq, block_q), n * m))


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
    (forward, _), meta, grid = _launch_setup(value, spatial_shapes, level_start_index,
                                          sampling_locations, attention_weights)
    n, s, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = sampling_locations.shape
    out = value.new_zeros(n, lq, m * d)
    if out.numel() == 0:
        return out
    forward[grid](
        value.contiguous(), spatial_shapes.contiguous(), level_start_index.contiguous(),
        sampling_locations.contiguous(), attention_weights.contiguous(), out,
        s, lq, m, d, num_levels, num_points, **meta,
    )
    return out


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
    (_, backward), meta, grid = _launch_setup(value, spatial_shapes, level_start_index,
                                          sampling_locations, attention_weights)
    n, s, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = sampling_locations.shape
    acc_dtype = torch.float64 if value.dtype == torch.float64 else torch.float32
    grad_value = torch.zeros(value.shape, dtype=acc_dtype, device=value.device)
    grad_loc = torch.zeros_like(sampling_locations)
    grad_attn = torch.zeros_like(attention_weights)
    if grad_attn.numel() == 0 or d == 0:
        return grad_value.to(value.dtype), grad_loc, grad_attn
    backward[grid](
        grad_output.contiguous(), value.contiguous(), spatial_shapes.contiguous(),
        level_start_index.contiguous(), sampling_locations.contiguous(),
        attention_weights.contiguous(), grad_value, grad_loc, grad_attn,
        s, lq, m, d, num_levels, num_points, **meta,
    )
    return grad_value.to(value.dtype), grad_loc, grad_attn
