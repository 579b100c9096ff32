"""Build and load the MSDA extensions from csrc/msda (JIT with ninja, or ahead of time).

Two extensions: `cpu` (op schemas + C++ CPU kernels) and `cuda` (CUDA kernels registered to the
same ops; needs the `cpu` one loaded first). Each is taken from an ahead-of-time build
(`FAD_BUILD_OPS=1 pip install -e .` puts `fad/ops/_msda_cpu*.so` / `_msda_cuda*.so` in place)
or else compiled on first use by `torch.utils.cpp_extension.load` into TORCH_EXTENSIONS_DIR.
Importing this module needs no compiler.
"""
from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path

import torch

from fad.utils.csrc import csrc_dir

CSRC = csrc_dir() / "msda"
CXX_FLAGS = ["-O3", "-fopenmp"]
LD_FLAGS = ["-fopenmp"]
NVCC_FLAGS = ["-O3", "-U__CUDA_NO_HALF_OPERATORS__",
              "-U__CUDA_NO_HALF_CONVERSIONS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__"]

_loaded: dict[str, bool] = {}
_errors: dict[str, str] = {}


class ExtensionUnavailable(RuntimeError):
    """The compiled MSDA extension cannot be built or loaded here (the message says why)."""


def sources(device_type: str) -> list[str]:
    """Source files of the `cpu` or `cuda` extension."""
    if device_type == "cpu":
        files = [CSRC / "binding.cpp", CSRC / "cpu" / "msda_cpu.cpp"]
    elif device_type == "cuda":
        files = [CSRC / "cuda" / "msda_cuda.cu"]
    else:
        raise ValueError(f"fad/ops/build.py: no MSDA extension for device type {device_type!r}")
    return [str(f) for f in files]


def check_cpp_toolchain() -> None:
    """Raise ExtensionUnavailable unless a C++ compiler and ninja are usable (puts the ninja of
    the pip package on PATH when it is not there, as in a venv that is not activated)."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise ExtensionUnavailable(f"no C++ compiler ({compiler!r} not on PATH); install g++")
    if shutil.which("ninja") is None:
        try:
            import ninja
        except ImportError:
            raise ExtensionUnavailable("ninja is not installed; pip install ninja") from None
        # the pip package's binary sits in its own folder, on PATH only in an activated venv
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def _check_toolchain(device_type: str) -> None:
    missing = [f for f in sources(device_type) if not os.path.exists(f)]
    if missing:
        raise ExtensionUnavailable(f"MSDA sources not found ({missing[0]}); use a source checkout")
    check_cpp_toolchain()
    if device_type == "cuda":
        from torch.utils.cpp_extension import CUDA_HOME

        if torch.version.cuda is None:
            raise ExtensionUnavailable("this torch build has no CUDA")
        if CUDA_HOME is None or not os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
            raise ExtensionUnavailable("nvcc not found; set CUDA_HOME to the CUDA toolkit root")
        if not os.path.exists(os.path.join(CUDA_HOME, "include", "cuda_runtime.h")):
            raise ExtensionUnavailable(f"CUDA_HOME={CUDA_HOME} has no include/cuda_runtime.h; set "
                                       "CUDA_HOME to the toolkit root (e.g. /usr/local/cuda)")


def _import_prebuilt(device_type: str) -> bool:
    try:
        importlib.import_module(f"fad.ops._msda_{device_type}")
    except ImportError:
        return False
    return True


def jit_build(device_type: str, build_directory: str | None = None, verbose: bool = False) -> None:
    """Compile (or reuse the cached build of) one extension with ninja and load it."""
    from torch.utils.cpp_extension import load

    _check_toolchain(device_type)
    kwargs = {}
    if device_type == "cuda":
        kwargs = {"extra_cuda_cflags": NVCC_FLAGS, "with_cuda": True}
    if build_directory is not None:
        os.makedirs(build_directory, exist_ok=True)
        kwargs["build_directory"] = build_directory
    load(name=f"fad_msda_{device_type}", sources=sources(device_type), extra_cflags=CXX_FLAGS,
         extra_ldflags=LD_FLAGS, is_python_module=False, verbose=verbose, **kwargs)


def load_extension(device_type: str) -> None:
    """Make the compiled MSDA kernels for `device_type` available (once per process).

    Raises:
        ExtensionUnavailable: with the reason (no compiler, no ninja, no nvcc, build error).
    """
    if _loaded.get(device_type):
        return
    if device_type in _errors:
        raise ExtensionUnavailable(_errors[device_type])
    try:
        if device_type == "cuda":
            load_extension("cpu")
        if not _import_prebuilt(device_type):
            jit_build(device_type)
    except ExtensionUnavailable as exc:
        _errors[device_type] = str(exc)
        raise
    except Exception as exc:  # compiler errors surface as RuntimeError/OSError/CalledProcessError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _errors[device_type] = (
            f"building the MSDA {device_type} extension failed ({first}); see the log with "
            f"python -c \"from fad.ops.build import jit_build; jit_build('{device_type}', "
            f"verbose=True)\"")
        raise ExtensionUnavailable(_errors[device_type]) from exc
    _loaded[device_type] = True


def ext_modules_and_cmdclass() -> tuple[list, dict]:
    """Extensions for setup.py (FAD_BUILD_OPS=1): always the CPU one, CUDA when nvcc is found.

    FAD_BUILD_CUDA=0/1 forces the CUDA extension off/on (default: on when CUDA_HOME exists and
    torch has CUDA).
    """
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    root = Path(__file__).resolve().parents[2]
    rel = [os.path.relpath(s, root) for s in sources("cpu")]
    modules = [CppExtension("fad.ops._msda_cpu", rel,
                            extra_compile_args={"cxx": CXX_FLAGS}, extra_link_args=LD_FLAGS),
               CppExtension("fad.ops._sparse_cpu",  # SparseResNet kernels (same build rules)
                            [os.path.relpath(csrc_dir() / "sparse_resnet" / "interp_cpu.cpp", root)],
                            extra_compile_args={"cxx": CXX_FLAGS + ["-Wno-psabi"]},
                            extra_link_args=LD_FLAGS),
               CppExtension("fad.ops._depthwise_cpu",  # depthwise 3x3 conv (FAD units)
                            [os.path.relpath(csrc_dir() / "depthwise" / "depthwise_cpu.cpp", root)],
                            extra_compile_args={"cxx": CXX_FLAGS}, extra_link_args=LD_FLAGS)]
    want_cuda = os.environ.get("FAD_BUILD_CUDA")
    if want_cuda is None:
        want_cuda = "1" if (CUDA_HOME is not None and torch.version.cuda is not None) else "0"
    if want_cuda == "1":
        rel_cu = [os.path.relpath(s, root) for s in sources("cuda")]
        modules.append(CUDAExtension("fad.ops._msda_cuda", rel_cu,
                                     extra_compile_args={"cxx": CXX_FLAGS, "nvcc": NVCC_FLAGS}))
    return modules, {"build_ext": BuildExtension.with_options(use_ninja=True)}
