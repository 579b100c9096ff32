"""Atomic checkpoints with a `last_checkpoint` pointer for `--resume`, a size + sha256 record
beside each checkpoint, retention of periodic checkpoints, and weights loading that says why a
checkpoint does not fit the model.

A save writes, each atomically (`fad.utils.io`): `<name>.pth`, then its record
`<name>.pth.sha256` (`sha256=<hex> bytes=<n>`, hashed while writing: no second read), then the
pointer. A kill at any instant thus leaves the pointer naming a complete checkpoint. Before a
checkpoint is loaded its record is checked (size, then hash); `--resume` falls back from a
damaged one to the newest intact one. Files load with torch's weights-only unpickler: a
checkpoint cannot run code.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from yacs.config import CfgNode

from fad.errors import CheckpointError
from fad.utils.io import atomic_torch_save, atomic_write_text

from .mismatch import (
    GENOTYPE_SOURCE,
    Builder,
    mismatch_line,
    mismatch_reasons,
    weights_difference,
)

logger = logging.getLogger("fad")

PERIODIC = re.compile(r"model_(\d{7})\.pth")  # the trainer's periodic/interrupt checkpoints
FINAL = "model_final.pth"
POINTER = "last_checkpoint"
RECORD = ".sha256"  # suffix of a checkpoint's size + hash record
MIN_KEEP = 2  # retention never keeps fewer periodic checkpoints: one to fall back to
_RECORD_LINE = re.compile(r"sha256=([0-9a-f]{64}) bytes=(\d+)")


def damage(path: str) -> str | None:
    """Why the checkpoint at `path` is damaged (missing, or size / sha256 not those of its
    record), or None when it is intact. A checkpoint without a record (another tool's file)
    counts as intact here; reading it is the test."""
    if not os.path.isfile(path):
        return "missing"
    if not os.path.isfile(path + RECORD):
        return None
    with open(path + RECORD, encoding="utf-8", errors="replace") as f:
        found = _RECORD_LINE.fullmatch(f.read().strip())
    if not found:
        return f"its record {os.path.basename(path)}{RECORD} is unreadable"
    size = os.path.getsize(path)
    if size != int(found.group(2)):
        return f"{size} bytes, its record says {found.group(2)}"
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != found.group(1):
        return "its sha256 differs from its record"
    return None


def numpy_array_globals() -> list:
    """What the weights-only unpickler needs for plain numpy arrays (data, no code): checkpoints
    written before the RNG state was stored as tensors hold numpy's generator state (a uint32
    array). An object array would need more globals and stays refused."""
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    return [np.ndarray, np.dtype, np.dtypes.UInt32DType, multiarray._reconstruct]


class Checkpointer:
    """Writes `output_dir/<name>.pth` and its record atomically and names it in
    `output_dir/last_checkpoint`."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir

    def save(self, name: str, state: dict) -> str:
        """Write checkpoint `name` (its record, then the pointer); returns its path. A failed
        write is a one-line `WriteError`; the previous files stay as they were."""
        path = os.path.join(self.output_dir, f"{name}.pth")
        size, sha256 = atomic_torch_save(state, path)
        atomic_write_text(path + RECORD, f"sha256={sha256} bytes={size}\n")
        atomic_write_text(os.path.join(self.output_dir, POINTER), os.path.basename(path))
        return path

    def prune(self, keep: int) -> list[str]:
        """Delete all but the newest max(`keep`, MIN_KEEP) periodic checkpoints
        (`model_XXXXXXX.pth`, with their records); keep <= 0 keeps all. model_final.pth and the
        checkpoint `last_checkpoint` names always stay. Returns the deleted checkpoints."""
        if keep <= 0:
            return []
        named = self._named()
        names = sorted(n for n in os.listdir(self.output_dir) if PERIODIC.fullmatch(n))
        old = [os.path.join(self.output_dir, n) for n in names[:-max(keep, MIN_KEEP)]]
        old = [p for p in old if named is None or os.path.basename(p) != os.path.basename(named)]
        for path in old:
            os.remove(path)
            if os.path.exists(path + RECORD):
                os.remove(path + RECORD)
        return old

    def remove_leftovers(self) -> list[str]:
        """Delete the temporary files that writes of checkpoints, records and the pointer left
        when the process was killed mid-write (`.tmp-*`); returns their paths."""
        left = [os.path.join(self.output_dir, n) for n in os.listdir(self.output_dir)
                if n.startswith(".tmp-") and n.endswith((".pth", RECORD, POINTER))]
        for path in left:
            os.remove(path)
        return left

    def _named(self) -> str | None:
        """Path of the checkpoint `last_checkpoint` names (it may be missing), or None."""
        pointer = os.path.join(self.output_dir, POINTER)
        if not os.path.isfile(pointer):
            return None
        with open(pointer, encoding="utf-8", errors="replace") as f:
            return os.path.join(self.output_dir, f.read().strip())

    def _newest_first(self) -> list[str]:
        """This folder's checkpoints: model_final.pth, then the periodic ones, newest first."""
        names = sorted((n for n in os.listdir(self.output_dir) if PERIODIC.fullmatch(n)),
                       reverse=True)
        return [os.path.join(self.output_dir, n) for n in [FINAL, *names]]

    def last(self) -> str | None:
        """Path of the newest intact checkpoint, None when `last_checkpoint` names none (a
        fresh folder). The one `last_checkpoint` names comes first; when it is damaged, one
        warning names it and the newest intact other one is used; when none is intact, a
        one-line CheckpointError names them."""
        named = self._named()
        if named is None:
            return None
        others = [p for p in self._newest_first() if os.path.basename(p) != os.path.basename(named)]
        damaged = []
        for path in [named, *others]:
            reason = damage(path)
            if reason is None:
                if damaged:
                    logger.warning("warning: checkpoint %s is damaged (%s); resuming from %s, "
                                   "the newest intact one", damaged[0][0], damaged[0][1], path)
                return path
            if reason != "missing" or path == named:
                damaged.append((path, reason))
        listed = "; ".join(f"{p}: {r}" for p, r in damaged)
        raise CheckpointError(f"no intact checkpoint to resume from in {self.output_dir} "
                              f"({listed}); start again with --overwrite")

    @staticmethod
    def load(path: str, checked: bool = False) -> dict:
        """Read a checkpoint on the CPU with the weights-only unpickler, after checking its
        record (unless `checked`: `last()` just did); a missing, damaged, unreadable or
        code-carrying file is a one-line error."""
        if not os.path.isfile(path):
            raise CheckpointError(f"checkpoint {path} does not exist; check MODEL.WEIGHT or the "
                                  "output folder")
        reason = None if checked else damage(path)
        if reason is not None:
            raise CheckpointError(f"checkpoint {path} is damaged ({reason}); use an earlier "
                                  "checkpoint of the run")
        try:
            with torch.serialization.safe_globals(numpy_array_globals()):
                return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets one line
            text = " ".join(str(exc).split())
            code = re.search(r"GLOBAL (\S+)", text)
            if code:
                raise CheckpointError(
                    f"checkpoint {path} holds more than weights (it names {code.group(1)}, "
                    "which unpickling would run); not loaded: save its tensors with torch.save, "
                    "or convert a release you trust with fad-convert --trust-file") from None
            detail = text.split("error: ")[-1].split(". ")[0].split(" Check the doc")[0]
            detail = detail or type(exc).__name__
            raise CheckpointError(f"checkpoint {path} is corrupt or not a torch file "
                                  f"({detail}); use an intact checkpoint") from None


def load_model_weights(model: nn.Module, state: dict, source: str, cfg: CfgNode | None = None,
                       classes: Sequence[str] | None = None, genotype: str | None = None,
                       build: Builder | None = None,
                       genotype_source: str = GENOTYPE_SOURCE) -> None:
    """Load the weights of checkpoint `state` (read from `source`) into `model`.

    Weights that do not fit are a one-line CheckpointError saying why, decisive difference
    first (`fad.engine.mismatch`): what the checkpoint stores (its `cfg` dump, `classes`,
    `genotype`) compared with the current `cfg` (through `build`, the builder of `model`;
    default: the detector of MODEL.META_ARCHITECTURE), `classes` and `genotype` (from
    `genotype_source`), each compared when given; else which weights are missing, unexpected
    or of another shape.
    """
    weights = model_state(state)
    try:
        model.load_state_dict(weights)
    except RuntimeError:
        reasons = mismatch_reasons(state, model, cfg, classes, genotype, build, genotype_source)
        if not reasons:
            reasons = [weights_difference(model.state_dict(), weights)]
        raise CheckpointError(mismatch_line(source, reasons)) from None


def model_state(state: dict) -> dict:
    """The model weights inside a checkpoint (ours: key `model`; else a bare state dict)."""
    return state.get("model", state)
