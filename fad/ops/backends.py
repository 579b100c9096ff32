"""Which backend runs each op: the settings, their sources and the fallback to the reference.

Each op in `BACKENDS` has one setting, the config key MODEL.OPS.<OP>_BACKEND (applied by
`configure_backends(cfg)` when a tool starts, or `set_backend`), overridden by the environment
variable FAD_<OP>_BACKEND; default "auto". "auto" runs a compiled kernel when it loads, else the
pure-PyTorch reference with one warning naming the reason; a kernel backend named explicitly
that cannot load is an error (`ExtensionUnavailable`). The process's settings live in one
object, `STATE`.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from fad.errors import OpError

from .build import ExtensionUnavailable, load

BACKENDS: dict[str, tuple[str, ...]] = {
    "msda": ("auto", "reference", "cpp", "cuda", "triton"),
    "depthwise": ("auto", "reference", "cpp"),
    "sparse": ("auto", "reference", "cpp"),
    "mix": ("auto", "reference", "cpp"),
    "gn_relu": ("auto", "reference", "cpp"),
    "conv_wgrad": ("auto", "reference", "gemm", "cpp"),
}

_logger = logging.getLogger(__name__)


@dataclass
class BackendState:
    """The backend settings of this process: `configured` by the config or `set_backend`,
    `forced` by `using` blocks, and the (op, device type) fallbacks already `warned` about."""

    configured: dict[str, str] = field(default_factory=dict)
    forced: dict[str, str] = field(default_factory=dict)
    warned: set[tuple[str, str]] = field(default_factory=set)


STATE = BackendState()


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
    """Set the backend of `op` (a key of `BACKENDS`); None goes back to "auto".

    The environment variable `env_var(op)` still overrides it when set.
    """
    if name is None:
        STATE.configured.pop(op, None)
    else:
        STATE.configured[op] = _checked(op, name, "set_backend")


@contextlib.contextmanager
def using(op: str, name: str) -> Iterator[None]:
    """Run `op` on backend `name` inside the block, above the environment and the config (for
    checks that compare backends, e.g. `fad.ops.selftest`)."""
    previous = STATE.forced.get(op)
    STATE.forced[op] = _checked(op, name, "using")
    try:
        yield
    finally:
        if previous is None:
            STATE.forced.pop(op)
        else:
            STATE.forced[op] = previous


def get_backend(op: str) -> str:
    """The backend in force for `op`: a `using` block's, else FAD_<OP>_BACKEND if set, else the
    configured one, else "auto"."""
    if op in STATE.forced:
        return STATE.forced[op]
    from_env = os.environ.get(env_var(op), "").strip()
    if from_env:
        return _checked(op, from_env, f"the {env_var(op)} environment variable")
    return STATE.configured.get(op) or _checked(op, "auto", "the default")


def configure_backends(cfg) -> None:
    """Apply the config's MODEL.OPS.<OP>_BACKEND keys (called once when a tool starts)."""
    for op in BACKENDS:
        set_backend(op, _checked(op, cfg.MODEL.OPS[f"{op.upper()}_BACKEND"], config_key(op)))


def fallback_warning(op: str, device_type: str, reason: str) -> None:
    """Log once per (op, device type) that `op` runs the slower pure-PyTorch reference."""
    if (op, device_type) in STATE.warned:
        return
    STATE.warned.add((op, device_type))
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
