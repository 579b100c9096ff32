"""Compiled kernels: the one list of C++/CUDA extensions, their loader, and every op's backend.

Extensions (`EXTENSIONS`; sources under csrc/, one `torch.ops` namespace each):

    msda_cpu       fad_msda    MSDA forward/backward, CPU
    msda_cuda      fad_msda    MSDA forward/backward, CUDA (opt-in backend "cuda")
    depthwise_cpu  fad_dw      depthwise 3x3 convolution, CPU
    sparse_cpu     fad_sparse  SparseResNet interpolation, gathered convs, tap sums, CPU

Each is imported from an ahead-of-time build (`FAD_BUILD_OPS=1 pip install -e .` puts
`fad/ops/_<name>*.so` in place; `setup_extensions` is the list setup.py builds) or else
compiled on first use by `torch.utils.cpp_extension.load` with ninja into TORCH_EXTENSIONS_DIR.
Op schemas are declared in Python (`define_library`, when the op's module is imported) and the
C++ files only register kernels for them (TORCH_LIBRARY_IMPL), so every op exists, traces and
has its FLOP formula before, or without, a build. Importing this module needs no compiler.

Backends: each op in `BACKENDS` has one setting, the config key MODEL.OPS.<OP>_BACKEND (applied
by `configure_backends(cfg)` when a tool starts, or `set_backend`), overridden by the
environment variable FAD_<OP>_BACKEND; default "auto". "auto" runs a compiled kernel when it
loads, else the pure-PyTorch reference with one warning naming the reason; a kernel backend
named explicitly that cannot load is an error (`ExtensionUnavailable`).
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
import shutil
from collections.abc import Iterator
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

BACKENDS: dict[str, tuple[str, ...]] = {
    "msda": ("auto", "reference", "cpp", "cuda", "triton"),
    "depthwise": ("auto", "reference", "cpp"),
    "sparse": ("auto", "reference", "cpp"),
}

_logger = logging.getLogger(__name__)


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
    Extension("msda_cpu", "MSDA CPU kernel", "fad.ops.msda", ("msda/cpu/msda_cpu.cpp",)),
    Extension("msda_cuda", "MSDA CUDA kernel", "fad.ops.msda", ("msda/cuda/msda_cuda.cu",),
              cuda=True),
    Extension("depthwise_cpu", "depthwise 3x3 CPU kernel", "fad.ops.depthwise",
              ("depthwise/depthwise_cpu.cpp",)),
    Extension("sparse_cpu", "SparseResNet CPU kernels", "fad.modeling.backbone.sparse.kernel",
              ("sparse_resnet/interpolate_cpu.cpp", "sparse_resnet/gather_conv_cpu.cpp",
               "sparse_resnet/gather_windows_cpu.cpp", "sparse_resnet/tap_sum_cpu.cpp",
               "sparse_resnet/active_rows_cpu.cpp", "sparse_resnet/register_cpu.cpp"),
              cflags=("-Wno-psabi",)),
)}

_loaded: set[str] = set()
_errors: dict[str, str] = {}
_configured: dict[str, str] = {}
_forced: dict[str, str] = {}
_warned: set[tuple[str, str]] = set()


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


def load(name: str) -> None:
    """Make the kernels of extension `name` available (once per process).

    Raises:
        ExtensionUnavailable: with the reason (no compiler, no ninja, no nvcc, build error);
            the reason is remembered, so a failed build is not retried in this process.
    """
    if name in _loaded:
        return
    if name in _errors:
        raise ExtensionUnavailable(_errors[name])
    importlib.import_module(EXTENSIONS[name].schemas)  # the op schemas the kernels implement
    try:
        importlib.import_module(f"fad.ops._{name}")
    except ImportError:
        try:
            jit_build(name)
        except ExtensionUnavailable as exc:
            _errors[name] = str(exc)
            raise
        except Exception as exc:  # compiler errors: RuntimeError/OSError/CalledProcessError
            text = str(exc).strip()
            first = text.splitlines()[0] if text else type(exc).__name__
            _errors[name] = (f"building the {EXTENSIONS[name].what} failed ({first}); see the "
                             f"log with python -c \"from fad.ops.kernels import jit_build; "
                             f"jit_build('{name}', verbose=True)\"")
            raise ExtensionUnavailable(_errors[name]) from exc
    _loaded.add(name)


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


def env_var(op: str) -> str:
    """The environment variable that overrides the backend of `op`, e.g. FAD_MSDA_BACKEND."""
    return f"FAD_{op.upper()}_BACKEND"


def config_key(op: str) -> str:
    """The config key of the backend of `op`, e.g. MODEL.OPS.MSDA_BACKEND."""
    return f"MODEL.OPS.{op.upper()}_BACKEND"


def _checked(op: str, name: str, where: str) -> str:
    if op not in BACKENDS:
        raise OpError(f"unknown op {op!r}; ops with backends: {', '.join(BACKENDS)}")
    name = name.strip().lower()
    if name not in BACKENDS[op]:
        raise OpError(f"unknown {op} backend {name!r} from {where}; use one of "
                      f"{', '.join(BACKENDS[op])}")
    return name


def set_backend(op: str, name: str | None) -> None:
    """Set the backend of `op` ("msda", "depthwise", "sparse"); None goes back to "auto".

    The environment variable `env_var(op)` still overrides it when set.
    """
    if name is None:
        _configured.pop(op, None)
    else:
        _configured[op] = _checked(op, name, "set_backend")


@contextlib.contextmanager
def using(op: str, name: str) -> Iterator[None]:
    """Run `op` on backend `name` inside the block, above the environment and the config (for
    checks that compare backends, e.g. `fad.ops.selftest`)."""
    previous = _forced.get(op)
    _forced[op] = _checked(op, name, "using")
    try:
        yield
    finally:
        if previous is None:
            _forced.pop(op)
        else:
            _forced[op] = previous


def get_backend(op: str) -> str:
    """The backend in force for `op`: a `using` block's, else FAD_<OP>_BACKEND if set, else the
    configured one, else "auto"."""
    if op in _forced:
        return _forced[op]
    from_env = os.environ.get(env_var(op), "").strip()
    if from_env:
        return _checked(op, from_env, f"the {env_var(op)} environment variable")
    return _configured.get(op) or _checked(op, "auto", "the default")


def configure_backends(cfg) -> None:
    """Apply the config's MODEL.OPS.<OP>_BACKEND keys (called once when a tool starts)."""
    for op in BACKENDS:
        set_backend(op, _checked(op, cfg.MODEL.OPS[f"{op.upper()}_BACKEND"], config_key(op)))


def fallback_warning(op: str, device_type: str, reason: str) -> None:
    """Log once per (op, device type) that `op` runs the slower pure-PyTorch reference."""
    if (op, device_type) in _warned:
        return
    _warned.add((op, device_type))
    _logger.warning("%s on %s uses the pure-PyTorch reference (slower): %s; set %s=reference "
                    "(or %s reference) to silence this", op, device_type, reason, env_var(op),
                    config_key(op))


def unavailable(op: str, backend: str, reason: str) -> ExtensionUnavailable:
    """The error for a backend named explicitly that cannot run here."""
    return ExtensionUnavailable(f"{op} backend {backend!r} ({config_key(op)} / {env_var(op)}) "
                                f"cannot run here: {reason}")


def use_cpu_kernel(op: str, extension: str, device_type: str) -> bool:
    """Whether `op` on `device_type` runs the compiled CPU kernel of `extension` (built on first
    use); other devices always use the reference. Under "auto" a build failure falls back with
    one warning; under "cpp" it raises `ExtensionUnavailable`."""
    backend = get_backend(op)
    if backend == "reference" or device_type != "cpu":
        return False
    try:
        load(extension)
    except ExtensionUnavailable as exc:
        if backend != "auto":
            raise unavailable(op, backend, str(exc)) from None
        fallback_warning(op, device_type, str(exc))
        return False
    return True
