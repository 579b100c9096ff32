"""Which MSDA backend runs, and the call into each (setting MODEL.OPS.MSDA_BACKEND /
FAD_MSDA_BACKEND, see `fad.ops.backends`):

    reference  pure-PyTorch `grid_sample` (fad.ops.msda.reference), any device and dtype
    cpp        C++ CPU kernel (`torch.ops.fad_msda`, csrc/msda/cpu), CPU tensors
    cuda       C++ CUDA kernel (csrc/msda/cuda), CUDA tensors; opt-in
    triton     Triton kernels (fad.ops.msda.triton), CUDA tensors, or CPU tensors when
               TRITON_INTERPRET=1 (Triton's interpreter)
    auto       CPU: cpp; CUDA: triton, else cuda; falling back to reference with one warning
"""
from __future__ import annotations

import functools
import importlib
import os
from typing import Callable

import torch
from torch import Tensor

from .. import backends
from ..build import ExtensionUnavailable, load
from .reference import ms_deform_attn_reference, ms_deform_attn_reference_backward

OP = "msda"
_AUTO = {"cpu": ("cpp",), "cuda": ("triton", "cuda")}


def _triton_module():
    return importlib.import_module("fad.ops.msda.triton")


@functools.lru_cache(maxsize=1)
def _triton_import_error() -> str | None:
    try:
        module = _triton_module()
    except ImportError as exc:
        return f"the Triton kernels cannot be imported ({exc})"
    return module.triton_unavailable()


def backend_unavailable(backend: str, device_type: str) -> str | None:
    """Why MSDA `backend` cannot run `device_type` tensors here, or None when it can (loads,
    and on first use builds, the compiled extension it needs)."""
    if backend == "reference":
        return None
    if backend == "triton":
        if device_type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            return "Triton runs CPU tensors only under TRITON_INTERPRET=1"
        if device_type not in ("cpu", "cuda"):
            return f"no Triton kernel for {device_type} tensors"
        return _triton_import_error()
    device = {"cpp": "cpu", "cuda": "cuda"}[backend]
    if device_type != device:
        return f"the {backend} kernel runs {device} tensors, not {device_type} ones"
    try:
        load(f"msda_{device}")
    except ExtensionUnavailable as exc:
        return str(exc)
    return None


def backend_for(device_type: str) -> str:
    """The backend that runs MSDA on `device_type` tensors under the current setting."""
    name = backends.get_backend(OP)
    if name != "auto":
        reason = backend_unavailable(name, device_type)
        if reason is not None:
            raise backends.unavailable(OP, name, reason)
        return name
    reasons = []
    for candidate in _AUTO.get(device_type, ()):
        reason = backend_unavailable(candidate, device_type)
        if reason is None:
            return candidate
        reasons.append(f"{candidate}: {reason}")
    if reasons:
        backends.fallback_warning(OP, device_type, "; ".join(reasons))
    return "reference"


def _kernel_shapes(spatial_shapes: Tensor, level_start_index: Tensor,
                   device: torch.device) -> tuple[Tensor, Tensor]:
    return (spatial_shapes.to(device=device, dtype=torch.int64).contiguous(),
            level_start_index.to(device=device, dtype=torch.int64).contiguous())


def _forward_reference(value, spatial_shapes, level_start_index, loc, attn, shapes) -> Tensor:
    with torch.no_grad():
        return ms_deform_attn_reference(value, spatial_shapes, level_start_index, loc, attn,
                                        shapes)


def _backward_reference(grad_output, value, spatial_shapes, level_start_index, loc, attn, shapes):
    return ms_deform_attn_reference_backward(grad_output, value, spatial_shapes,
                                             level_start_index, loc, attn, shapes)


def _forward_compiled(value, spatial_shapes, level_start_index, loc, attn, shapes) -> Tensor:
    shapes, starts = _kernel_shapes(spatial_shapes, level_start_index, value.device)
    return torch.ops.fad_msda.forward(value.contiguous(), shapes, starts, loc.contiguous(),
                                      attn.contiguous())


def _forward_triton(value, spatial_shapes, level_start_index, loc, attn, shapes) -> Tensor:
    shapes, starts = _kernel_shapes(spatial_shapes, level_start_index, value.device)
    return _triton_module().msda_triton_forward(value.contiguous(), shapes, starts,
                                                loc.contiguous(), attn.contiguous())


def _backward_compiled(grad_output, value, spatial_shapes, level_start_index, loc, attn, shapes):
    shapes, starts = _kernel_shapes(spatial_shapes, level_start_index, value.device)
    return tuple(torch.ops.fad_msda.backward(grad_output.contiguous(), value.contiguous(), shapes,
                                             starts, loc.contiguous(), attn.contiguous()))


def _backward_triton(grad_output, value, spatial_shapes, level_start_index, loc, attn, shapes):
    shapes, starts = _kernel_shapes(spatial_shapes, level_start_index, value.device)
    return tuple(_triton_module().msda_triton_backward(
        grad_output.contiguous(), value.contiguous(), shapes, starts, loc.contiguous(),
        attn.contiguous()))


# Every backend takes (grad_output,) value, spatial_shapes, level_start_index, locations, weights
# and the level shapes as host ints [(H_l, W_l)]: the reference needs them to split the levels,
# the kernels read the shape tensors on the device instead.
FORWARD: dict[str, Callable[..., Tensor]] = {
    "reference": _forward_reference, "cpp": _forward_compiled, "cuda": _forward_compiled,
    "triton": _forward_triton}
BACKWARD: dict[str, Callable[..., tuple[Tensor, Tensor, Tensor]]] = {
    "reference": _backward_reference, "cpp": _backward_compiled,
    "cuda": _backward_compiled, "triton": _backward_triton}
