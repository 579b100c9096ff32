"""Atomic file writes: a reader never sees a half-written checkpoint, genotype or metrics file."""
from __future__ import annotations

import os
import tempfile
from typing import Any

import torch


def _atomic(path: str, write) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    """Write `text` to `path` through a temporary file and an atomic rename."""
    _atomic(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and an atomic rename."""
    _atomic(path, lambda f: f.write(data))


def atomic_torch_save(obj: Any, path: str) -> None:
    """`torch.save(obj, path)` through a temporary file and an atomic rename."""
    _atomic(path, lambda f: torch.save(obj, f))
