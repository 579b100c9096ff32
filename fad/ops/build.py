"""Compiled kernels: the one list of C++/CUDA extensions, their build and their loading.

Extensions (`EXTENSIONS`; sources under csrc/, one `torch.ops` namespace each):

    msda_cpu       fad_msda    MSDA forward/backward, CPU
    msda_cuda      fad_msda    MSDA forward/backward, CUDA (opt-in backend "cuda")
    depthwise_cpu  fad_dw      depthwise 3x3 convolution, CPU
    sparse_cpu     fad_sparse  SparseResNet interpolation, gathered convs, tap sums, CPU
    mix_cpu        fad_mix     FAD supernet edge mixing (GroupNorm + ReLU + sum), CPU
    gn_relu_cpu    fad_gn_relu GroupNorm + ReLU on channels-last maps, CPU
    conv_wgrad_cpu fad_conv_wgrad a convolution's weight gradient on channels-last maps, CPU

Each is imported from an ahead-of-time build (`FAD_BUILD_OPS=1 pip install -e .` puts
`fad/ops/_<name>*.so` in place; `setup_extensions` is the list setup.py builds) or else
compiled on first use by `torch.utils.cpp_extension.load` with ninja into TORCH_EXTENSIONS_DIR.
Op schemas are declared in Python (`define_library`, in each op's `schema.py`) and the C++ files
only register kernels for them (TORCH_LIBRARY_IMPL), so every op exists, traces and has its FLOP
formula before, or without, a build. Importing this module needs no compiler; setup.py loads it
by path, so it imports nothing of `fad` but `fad.errors` and `fad.utils.csrc`.
"""
from __future__ import annotations

import functools
import importlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from fad.errors import OpError
from fad.utils.csrc import csrc_dir

CXX_FLAGS = ("-O3", "-fopenmp")
LD_FLAGS = ("-fopenmp",)
NVCC_FLAGS = ("-O3", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT16_CONVERSIONS__")


class ExtensionUnavailable(OpError):
    """A compiled extension cannot be built or loaded here (the message says why)."""


@dataclass(frozen=True)
class Extension:
    """One compiled extension: `sources` (relative to csrc/) built as `fad_<name>` by the JIT
    loader, or imported as `fad.ops._<name>` from an ahead-of-time build; its kernels implement
    the ops that module `schemas` declares."""

    name: str
    what: str
    schemas: str
    sources: tuple[str, ...]
    cuda: bool = False
    cflags: tuple[str, ...] = ()

    def source_paths(self) -> list[Path]:
        """Absolute paths of the sources."""
        return [csrc_dir() / s for s in self.sources]


EXTENSIONS: dict[str, Extension] = {ext.name: ext for ext in (
    Extension("msda_cpu", "MSDA CPU kernel", "fad.ops.msda.schema", ("msda/cpu/msda_cpu.cpp",)),
    Extension("msda_cuda", "MSDA CUDA kernel", "fad.ops.msda.schema",
              ("msda/cuda/msda_cuda.cu",), cuda=True),
    Extension("depthwise_cpu", "depthwise 3x3 CPU kernel", "fad.ops.depthwise.schema",
              ("depthwise/depthwise_cpu.cpp", "depthwise/depthwise_nhwc_cpu.cpp"),
              cflags=("-Wno-psabi",)),
    Extension("sparse_cpu", "SparseResNet CPU kernels", "fad.ops.sparse.schema",
              ("sparse_resnet/interpolate_cpu.cpp", "sparse_resnet/gather_conv_cpu.cpp",
               "sparse_resnet/gather_windows_cpu.cpp", "sparse_resnet/tap_sum_cpu.cpp",
               "sparse_resnet/active_rows_cpu.cpp", "sparse_resnet/stem_cpu.cpp",
               "sparse_resnet/register_cpu.cpp"),
              cflags=("-Wno-psabi",)),
    Extension("mix_cpu", "FAD edge mixing CPU kernel", "fad.ops.mix.schema",
              ("mix/gn_relu_sum_cpu.cpp",)),
    Extension("gn_relu_cpu", "GroupNorm + ReLU CPU kernel", "fad.ops.gn_relu.schema",
              ("gn_relu/gn_relu_cpu.cpp",)),
    Extension("conv_wgrad_cpu", "convolution weight-gradient CPU kernel",
              "fad.ops.conv_wgrad.schema", ("conv_wgrad/direct_cpu.cpp",)),
)}


def define_library(namespace: str, schemas: tuple[str, ...]) -> torch.library.Library:
    """Declare the kernel ops `namespace::<schema>`; the C++ side registers their kernels.

    Keep the returned library alive (a module global): dropping it removes the definitions.
    """
    lib = torch.library.Library(namespace, "DEF")
    for schema in schemas:
        lib.define(schema)
    return lib


def _check_cpp_toolchain() -> None:
    """A C++ compiler and ninja must be usable (puts the pip package's ninja on PATH when it is
    not there, as in a venv that is not activated)."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise ExtensionUnavailable(f"no C++ compiler ({compiler!r} not on PATH); install g++")
    if shutil.which("ninja") is None:
        try:
            import ninja
        except ImportError:
            raise ExtensionUnavailable("ninja is not installed; pip install ninja") from None
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def _check_cuda_toolchain() -> None:
    from torch.utils.cpp_extension import CUDA_HOME

    if torch.version.cuda is None:
        raise ExtensionUnavailable("this torch build has no CUDA")
    if CUDA_HOME is None or not os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        raise ExtensionUnavailable("nvcc not found; set CUDA_HOME to the CUDA toolkit root")
    if not os.path.exists(os.path.join(CUDA_HOME, "include", "cuda_runtime.h")):
        raise ExtensionUnavailable(f"CUDA_HOME={CUDA_HOME} has no include/cuda_runtime.h; set "
                                   "CUDA_HOME to the toolkit root (e.g. /usr/local/cuda)")


def _cpp_extension() -> ModuleType:
    """torch.utils.cpp_extension, imported without the "No CUDA runtime is found" warning it
    logs on a machine without a GPU (about CUDA_HOME, which CPU kernels do not use)."""
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        import torch.utils.cpp_extension as cpp_extension
    finally:
        log.setLevel(level)
    return cpp_extension


def jit_build(name: str, build_directory: str | None = None, verbose: bool = False) -> None:
    """Compile (or reuse the cached build of) extension `name` with ninja and load it."""
    load = _cpp_extension().load

    ext = EXTENSIONS[name]
    missing = [str(p) for p in ext.source_paths() if not p.exists()]
    if missing:
        raise ExtensionUnavailable(f"{ext.what} sources not found ({Path(missing[0]).name}); "
                                   "install fad from a source checkout")
    _check_cpp_toolchain()
    kwargs = {}
    if ext.cuda:
        _check_cuda_toolchain()
        kwargs = {"extra_cuda_cflags": list(NVCC_FLAGS), "with_cuda": True}
    if build_directory is not None:
        os.makedirs(build_directory, exist_ok=True)
        kwargs["build_directory"] = build_directory
    load(name=f"fad_{name}", sources=[str(p) for p in ext.source_paths()],
         extra_cflags=[*CXX_FLAGS, *ext.cflags], extra_ldflags=list(LD_FLAGS),
         is_python_module=False, verbose=verbose, **kwargs)


@functools.cache
def load_error(name: str) -> str | None:
    """Load extension `name` (prebuilt, else built now); None when its kernels are available,
    else why not (no compiler, no ninja, no nvcc, build error). Tried once per process: the
    cache remembers success and failure alike."""
    importlib.import_module(EXTENSIONS[name].schemas)  # the op schemas the kernels implement
    try:
        importlib.import_module(f"fad.ops._{name}")
    except ImportError:
        try:
            jit_build(name)
        except ExtensionUnavailable as exc:
            return str(exc)
        except Exception as exc:  # compiler errors: RuntimeError/OSError/CalledProcessError
            text = str(exc).strip()
            first = text.splitlines()[0] if text else type(exc).__name__
            return (f"building the {EXTENSIONS[name].what} failed ({first}); see the log with "
                    f"python -c \"from fad.ops.build import jit_build; "
                    f"jit_build('{name}', verbose=True)\"")
    return None


def load(name: str) -> None:
    """Make the kernels of extension `name` available (once per process).

    Raises:
        ExtensionUnavailable: with the reason (`load_error`); a failed build is not retried in
            this process.
    """
    reason = load_error(name)
    if reason is not None:
        raise ExtensionUnavailable(reason)


def setup_extensions() -> tuple[list, dict]:
    """(ext_modules, cmdclass) for setup.py: every extension; the CUDA ones when torch has CUDA
    and CUDA_HOME holds a toolkit, or as FAD_BUILD_CUDA=0/1 forces."""
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    want_cuda = os.environ.get("FAD_BUILD_CUDA")
    if want_cuda is None:
        want_cuda = "1" if (CUDA_HOME is not None and torch.version.cuda is not None) else "0"
    root = csrc_dir().parent
    modules = []
    for ext in EXTENSIONS.values():
        if ext.cuda and want_cuda != "1":
            continue
        sources = [os.path.relpath(p, root) for p in ext.source_paths()]
        flags = {"cxx": [*CXX_FLAGS, *ext.cflags]}
        if ext.cuda:
            flags["nvcc"] = list(NVCC_FLAGS)
            modules.append(CUDAExtension(f"fad.ops._{ext.name}", sources,
                                         extra_compile_args=flags))
        else:
            modules.append(CppExtension(f"fad.ops._{ext.name}", sources,
                                        extra_compile_args=flags, extra_link_args=list(LD_FLAGS)))
    return modules, {"build_ext": BuildExtension.with_options(use_ninja=True)}
