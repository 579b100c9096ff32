"""Device audit: run model code on fake device tensors and report what would hurt on a GPU.

Inside a `DeviceAudit` every tensor is a `FakeTensor` (no data, no compute) on a pretend
device, so the CUDA path of a model can be checked on a machine without a GPU. Findings, each
with the source line of our code that caused it:

- `mismatch`: an op mixed the device with the CPU (FakeTensorDeviceMismatchError on a GPU it is
  a RuntimeError); the phase stops there.
- `cpu-tensor`: an op of our code made a CPU tensor (other than a 0-dim scalar, which PyTorch
  moves for free) while the model runs on the device: a host computation plus a copy per call.
- `host-sync`: `.item()`, `.tolist()`, `bool(t)`, `float(t)` (aten `_local_scalar_dense`) or a
  copy to the CPU of a device tensor: the host waits for the GPU.
- `data-dependent`: an op whose output size depends on tensor values (`nonzero`, boolean
  indexing, ...) or a Python branch on such a size: a host sync on CUDA, and a graph break.
- `error`: the phase raised something else (its message).

A source line may name its sync and the reason with a `# host sync: <reason>` comment; such
findings are reported as allowed and do not fail the audit (docs/ops.md lists them).

Sizes that depend on data get a hint (`HINT_SIZE`) and scalars read back get 0 (`bool(t)` is
False, so input checks such as `if (labels < 0).any(): raise` pass; an `int(t)` used as an index
stays in range), so the code after them runs on. A hint
is not the real value: code whose shapes follow from a host copy of a device tensor (such as a
`spatial_shapes.tolist()`) may then fail with an `error` finding at a later line.

Limits: the C++ autograd engine needs a real CUDA context (pytorch/pytorch#92627), so a backward
pass runs on the fake `meta` device, which checks the same CPU mixing; the forward and the
inference run on the fake `cuda` device, so the CUDA branches of our code are taken.
"""
from __future__ import annotations

import linecache
import os
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import sympy
import torch
from torch._subclasses.fake_tensor import (
    FakeCopyMode,
    FakeTensorDeviceMismatchError,
    FakeTensorMode,
    unset_fake_temporarily,
)
from torch.fx.experimental.symbolic_shapes import ShapeEnv
from torch.utils._python_dispatch import TorchDispatchMode

T = TypeVar("T")
HINT_SIZE = 2  # the size every data-dependent dimension takes in the audit
ALLOW_MARK = "# host sync:"
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_SELF = os.path.abspath(__file__)
_SYNC_OPS = {torch.ops.aten._local_scalar_dense.default}
_COPY_OPS = {torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default}


@dataclass(frozen=True)
class Finding:
    """One finding: `kind` (see the module docstring), `where` ("path:line" of our code, or
    "?" when no frame of ours is on the stack), the source line `code` and a `detail`."""

    kind: str
    where: str
    code: str
    detail: str

    @property
    def allowed(self) -> bool:
        """True for a host sync or data-dependent size named by a `# host sync:` comment."""
        return self.kind in ("host-sync", "data-dependent") and ALLOW_MARK in self.code

    def line(self) -> str:
        """One report line: `where: kind: detail | code`."""
        mark = " (allowed)" if self.allowed else ""
        return f"{self.where}: {self.kind}{mark}: {self.detail} | {self.code.strip()}"


def _our_frame(frames: list[traceback.FrameSummary]) -> tuple[str, str]:
    """("path:line", source) of the innermost of `frames` in this repository (not in
    site-packages and not this module), or ("?", "")."""
    for frame in reversed(frames):
        name = os.path.abspath(frame.filename)
        ours = name.startswith(_REPO + os.sep) and name != _SELF
        if ours and f"{os.sep}.venv{os.sep}" not in name and "site-packages" not in name:
            code = linecache.getline(name, frame.lineno) or (frame.line or "")
            return f"{os.path.relpath(name, _REPO)}:{frame.lineno}", code
    return "?", ""


class _AuditShapeEnv(ShapeEnv):
    """A ShapeEnv that gives every data-dependent size a hint (so guards on it resolve) and
    tells its audit where each one was made and where code branched on one."""

    def __init__(self, audit: DeviceAudit):
        super().__init__()
        self.audit = audit
        self.device_symbols: set = set()  # sizes made by ops on the device (not on the CPU)

    def create_unbacked_symint(self, source=None):  # noqa: ANN001 - ShapeEnv's signature
        sym = super().create_unbacked_symint(source)
        hint = 0 if self.audit.scalar_read else HINT_SIZE  # `if (x < 0).any()` passes
        self.real_tensor_prop_unbacked_vals[sym.node.expr] = sympy.Integer(hint)
        if self.audit.in_device_op:
            self.device_symbols.add(sym.node.expr)
            self.audit.report("data-dependent", "an output size depends on device tensor "
                                                "values")
        return sym

    def create_unbacked_symfloat(self):
        sym = super().create_unbacked_symfloat()
        self.real_tensor_prop_unbacked_vals[sym.node.expr] = sympy.Float(0.5)
        return sym

    def create_unbacked_symbool(self):
        sym = super().create_unbacked_symbool()
        self.real_tensor_prop_unbacked_vals[sym.node.expr] = sympy.false
        return sym

    def _log_real_tensor_propagation(self, orig_expr, unsound_result) -> None:  # noqa: ANN001
        if orig_expr.free_symbols & self.device_symbols:
            self.audit.report("data-dependent", f"Python branch on a data-dependent value "
                                                f"({orig_expr})")


class _Watch(TorchDispatchMode):
    """Sees every op before the fake mode runs it: host syncs, copies to the CPU and CPU
    tensors made by our code."""

    def __init__(self, audit: DeviceAudit):
        super().__init__()
        self.audit = audit

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        on_device = any(t.device.type != "cpu" for t in tensors)
        if func in _SYNC_OPS and on_device:
            self.audit.report("host-sync", f"{func.__name__} (.item()/.tolist()/bool()) of a "
                                           "device tensor")
        outer, self.audit.in_device_op = self.audit.in_device_op, on_device
        self.audit.scalar_read = func in _SYNC_OPS
        try:
            out = func(*args, **kwargs)
        finally:
            self.audit.in_device_op, self.audit.scalar_read = outer, False
        outs = out if isinstance(out, (tuple, list)) else (out,)
        made_cpu = [o for o in outs if isinstance(o, torch.Tensor) and o.device.type == "cpu"]
        if func in _COPY_OPS and on_device and made_cpu:
            self.audit.report("host-sync", "a device tensor copied to the CPU (.cpu()/.to)")
        elif any(t.dim() > 0 for t in made_cpu) and not (tensors and on_device):
            self.audit.report("cpu-tensor", f"{func.__name__} made a CPU tensor of shape "
                                            f"{tuple(made_cpu[0].shape)}")
        return out


class DeviceAudit:
    """Collects findings of the code run inside `phase()` blocks on fake device tensors.

    ```
    audit = DeviceAudit()
    with audit.fake("cuda") as make:
        model, images = make(lambda: (build(), make_images()))   # on the fake device
        with audit.phase("inference"):
            model(images)
    print(audit.lines())
    ```
    """

    def __init__(self):
        self.findings: list[Finding] = []
        self._seen: set[tuple[str, str]] = set()
        self._phase = ""
        self.in_device_op = False  # set by the watch while an op with device inputs runs
        self.scalar_read = False  # set while `.item()`/`bool(t)` runs: hint 0, not HINT_SIZE

    def report(self, kind: str, detail: str, exc: BaseException | None = None) -> None:
        """Record a finding at the innermost frame of our code on the stack, or in the
        traceback of `exc` (once per kind and line)."""
        frames = traceback.extract_tb(exc.__traceback__) if exc else traceback.extract_stack()
        where, code = _our_frame(frames)
        if (kind, where) in self._seen:
            return
        self._seen.add((kind, where))
        prefix = f"[{self._phase}] " if self._phase else ""
        self.findings.append(Finding(kind, where, code, prefix + detail))

    @contextmanager
    def fake(self, device: str) -> Iterator[Callable[[Callable[[], T]], T]]:
        """Fake tensors, and a `make(fn)` that runs `fn` (building the model and its inputs)
        with `device` ("cuda" or "meta") as the default device. The phases run outside it, so
        a factory call without a device (`torch.zeros(n)`) makes a CPU tensor as it would on a
        GPU machine. On meta, `make` builds real meta tensors (no data either; fake tensors
        cannot build BatchNorm on meta), which the fake mode takes as inputs."""
        mode = FakeTensorMode(shape_env=_AuditShapeEnv(self),
                              allow_non_fake_inputs=device == "meta")

        def make(fn: Callable[[], T]) -> T:
            if device == "meta":
                with unset_fake_temporarily(), torch.device(device):
                    return fn()
            with torch.device(device), FakeCopyMode(mode):  # deepcopy keeps this fake mode
                return fn()

        with mode:
            yield make

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Watch the ops of the block; a device mismatch or another exception ends the block
        and becomes a finding instead of propagating."""
        self._phase = name
        try:
            with _Watch(self):
                yield
        except FakeTensorDeviceMismatchError as exc:
            self.report("mismatch", " ".join(str(exc).split())[:200], exc)
        except Exception as exc:  # noqa: BLE001 - any failure of the audited code is a finding
            self.report("error", f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}",
                        exc)
        finally:
            self._phase = ""

    def stand_in_assignment(self, cost: torch.Tensor, query_mask: torch.Tensor | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stand-in for a host assignment solver (`HungarianMatcher.assignment`), which cannot
        run on fake tensors: reports the host sync at the caller's line and pairs query i with
        target i, i < min(Q, T), on the cost's device. `cost` [Q, T]; `query_mask` unused."""
        del query_mask
        self.report("host-sync", "a host assignment solver reads the device cost matrix")
        index = torch.arange(min(cost.shape), device=cost.device)
        return index, index.clone()

    @property
    def failures(self) -> list[Finding]:
        """The findings that fail the audit (all but the allowed ones)."""
        return [f for f in self.findings if not f.allowed]

    def lines(self) -> list[str]:
        """One line per finding, failures first."""
        ordered = sorted(self.findings, key=lambda f: (f.allowed, f.kind, f.where))
        return [f.line() for f in ordered]
