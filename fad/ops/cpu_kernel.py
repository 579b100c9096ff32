"""A compiled CPU kernel from csrc/ with a backend switch (shared by SparseResNet and the
depthwise convolution; the MSDA op has its own loader in `build.py`, with CUDA).

The extension is taken from an ahead-of-time build (`FAD_BUILD_OPS=1 pip install -e .`) or
compiled on first use with ninja into TORCH_EXTENSIONS_DIR. An environment variable picks the
backend: "auto" (kernel when it builds or loads, else the pure-PyTorch path with one warning
naming the reason), "reference" (always PyTorch) or "cpp" (always the kernel; a build failure
is an error). Creating a `CpuKernel` or importing this module needs no compiler.
"""
from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path

from fad.ops.build import CXX_FLAGS, LD_FLAGS, ExtensionUnavailable, check_cpp_toolchain

BACKENDS = ("auto", "reference", "cpp")

_logger = logging.getLogger(__name__)


class CpuKernel:
    """One CPU extension: `sources` built as `jit_name`, or the prebuilt module `prebuilt`."""

    def __init__(self, what: str, jit_name: str, prebuilt: str, sources: list[Path],
                 env_var: str, extra_cflags: tuple[str, ...] = ()):
        self.what, self.jit_name, self.prebuilt = what, jit_name, prebuilt
        self.sources, self.env_var, self.extra_cflags = sources, env_var, list(extra_cflags)
        self._loaded, self._warned = False, False
        self._error: str | None = None

    def backend(self) -> str:
        """The backend named by the environment variable (default "auto")."""
        name = os.environ.get(self.env_var, "auto").strip().lower()
        if name not in BACKENDS:
            raise ValueError(f"{self.env_var}={name!r} is not one of {', '.join(BACKENDS)}")
        return name

    def _build(self) -> None:
        missing = [str(s) for s in self.sources if not s.exists()]
        if missing:
            raise ExtensionUnavailable(f"{self.what} sources not found ({missing[0]}); use a "
                                       "source checkout")
        check_cpp_toolchain()
        from torch.utils.cpp_extension import load

        load(name=self.jit_name, sources=[str(s) for s in self.sources],
             extra_cflags=[*CXX_FLAGS, *self.extra_cflags], extra_ldflags=LD_FLAGS,
             is_python_module=False, verbose=False)

    def _load(self) -> None:
        try:
            importlib.import_module(self.prebuilt)
            return
        except ImportError:
            pass
        try:
            self._build()
        except ExtensionUnavailable:
            raise
        except Exception as exc:  # compiler errors: RuntimeError/OSError/CalledProcessError
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExtensionUnavailable(f"building the {self.what} kernel failed ({first})") \
                from exc

    def available(self, device_type: str) -> bool:
        """Whether work on `device_type` runs the compiled kernel (builds it on first use)."""
        backend = self.backend()
        if backend == "reference" or device_type != "cpu":
            return False
        if self._error is None and not self._loaded:
            try:
                self._load()
                self._loaded = True
            except ExtensionUnavailable as exc:
                self._error = str(exc)
        if self._error is not None:
            if backend == "cpp":
                raise RuntimeError(f"{self.env_var}=cpp but {self._error}")
            if not self._warned:
                self._warned = True
                _logger.warning("%s uses the PyTorch path (slower): %s; set %s=reference to "
                                "silence this", self.what, self._error, self.env_var)
            return False
        return True
