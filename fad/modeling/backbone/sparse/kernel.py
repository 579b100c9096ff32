"""Load the compiled SparseResNet CPU kernels (csrc/sparse_resnet), same rules as the MSDA op.

The kernels (`torch.ops.fad_sparse.interpolate`, `.gather_windows`, `.tap_sum`; CPU, float32)
are taken from an ahead-of-time build (`fad.ops._sparse_cpu`) or compiled on first use with
ninja into TORCH_EXTENSIONS_DIR.
The environment variable FAD_SPARSE_BACKEND picks the backend: "auto" (kernel when it builds or
loads, else the pure-PyTorch reference with one warning naming the reason), "reference"
(always PyTorch) or "cpp" (always the kernel; a build failure is an error). CUDA tensors always
use the reference (gathers, cuDNN depthwise convolutions). Importing this module needs no
compiler.
"""
from __future__ import annotations

import importlib
import logging
import os
import shutil

import torch

from fad.ops.build import CXX_FLAGS, LD_FLAGS, ExtensionUnavailable
from fad.utils.csrc import csrc_dir

SOURCES = [csrc_dir() / "sparse_resnet" / "interp_cpu.cpp"]
BACKENDS = ("auto", "reference", "cpp")
ENV_VAR = "FAD_SPARSE_BACKEND"

_logger = logging.getLogger(__name__)
_state: dict[str, object] = {}


def get_backend() -> str:
    """The backend named by FAD_SPARSE_BACKEND (default "auto")."""
    name = os.environ.get(ENV_VAR, "auto").strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"fad/modeling/backbone/sparse/kernel.py: {ENV_VAR}={name!r} is not one "
                         f"of {', '.join(BACKENDS)}")
    return name


def _build() -> None:
    missing = [str(s) for s in SOURCES if not s.exists()]
    if missing:
        raise ExtensionUnavailable(f"sparse kernel sources not found ({missing[0]}); use a "
                                   "source checkout")
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise ExtensionUnavailable(f"no C++ compiler ({compiler!r} not on PATH); install g++")
    if shutil.which("ninja") is None:
        raise ExtensionUnavailable("ninja is not installed; pip install ninja")
    from torch.utils.cpp_extension import load

    load(name="fad_sparse_cpu", sources=[str(s) for s in SOURCES],
         extra_cflags=[*CXX_FLAGS, "-Wno-psabi"],
         extra_ldflags=LD_FLAGS, is_python_module=False, verbose=False)


def _load() -> None:
    """Make `torch.ops.fad_sparse.interpolate` available or raise ExtensionUnavailable."""
    try:
        importlib.import_module("fad.ops._sparse_cpu")
        return
    except ImportError:
        pass
    try:
        _build()
    except ExtensionUnavailable:
        raise
    except Exception as exc:  # compiler errors surface as RuntimeError/OSError/CalledProcessError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExtensionUnavailable(f"building the sparse interpolation kernel failed ({first})") \
            from exc


def kernel_runs(t: torch.Tensor) -> bool:
    """Whether the compiled CPU kernels handle tensor `t` (CPU, float32, kernel loaded)."""
    return t.device.type == "cpu" and t.dtype == torch.float32 and kernel_available("cpu")


def kernel_available(device_type: str) -> bool:
    """Whether interpolation on `device_type` runs the compiled kernel (builds it on first use)."""
    backend = get_backend()
    if backend == "reference" or device_type != "cpu":
        return False
    if "error" not in _state and not _state.get("loaded"):
        try:
            _load()
            _state["loaded"] = True
        except ExtensionUnavailable as exc:
            _state["error"] = str(exc)
    if "error" in _state:
        if backend == "cpp":
            raise RuntimeError(f"fad/modeling/backbone/sparse/kernel.py: {ENV_VAR}=cpp but "
                               f"{_state['error']}")
        if not _state.get("warned"):
            _state["warned"] = True
            _logger.warning("SparseResNet interpolation uses the PyTorch reference (slower): %s; "
                            "set %s=reference to silence this", _state["error"], ENV_VAR)
        return False
    return True
