"""Choose the MSDA backend in one place: compiled kernels when they load, else the reference.

Names: "auto" (compiled kernel when it builds/loads, else the grid_sample reference with a
one-time warning naming the reason), "reference" (always the pure-PyTorch path) and "cpp"
(always the compiled kernels: C++ on the CPU, CUDA on GPUs; a build failure is an error).
The environment variable FAD_MSDA_BACKEND sets it; `set_msda_backend` (e.g. from the config key
MODEL.MSDA_BACKEND) overrides the variable.
"""
from __future__ import annotations

import logging
import os

from .build import ExtensionUnavailable, load_extension

BACKENDS = ("auto", "reference", "cpp")
ENV_VAR = "FAD_MSDA_BACKEND"

_logger = logging.getLogger(__name__)
_override: str | None = None
_warned: set[str] = set()


def _check(name: str, where: str) -> str:
    name = name.strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"fad/ops/backend.py: unknown MSDA backend {name!r} from {where}; "
                         f"use one of {', '.join(BACKENDS)}")
    return name


def set_msda_backend(name: str | None) -> None:
    """Force the MSDA backend ("auto", "reference", "cpp"); None goes back to FAD_MSDA_BACKEND."""
    global _override
    _override = None if name is None else _check(name, "set_msda_backend")


def get_msda_backend() -> str:
    """The backend in force: the `set_msda_backend` override, else FAD_MSDA_BACKEND, else auto."""
    if _override is not None:
        return _override
    return _check(os.environ.get(ENV_VAR, "auto"), f"the {ENV_VAR} environment variable")


def use_kernel(device_type: str) -> bool:
    """Whether MSDA on `device_type` ("cpu", "cuda") runs the compiled kernel.

    Loads (building on first use) the extension for that device. Under "auto" a failure falls
    back to the reference with one warning per device type; under "cpp" it raises.
    """
    backend = get_msda_backend()
    if backend == "reference" or device_type not in ("cpu", "cuda"):
        return False
    try:
        load_extension(device_type)
    except ExtensionUnavailable as exc:
        if backend == "cpp":
            raise RuntimeError(f"fad/ops/backend.py: {ENV_VAR}=cpp but {exc}") from None
        if device_type not in _warned:
            _warned.add(device_type)
            _logger.warning("MSDA on %s uses the pure-PyTorch reference (slower): %s; set "
                            "%s=reference to silence this", device_type, exc, ENV_VAR)
        return False
    return True
