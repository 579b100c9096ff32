"""Atomic file writes: a reader never sees a half-written checkpoint, genotype or metrics file.

Each write goes to a temporary file beside the target (flushed and fsync'ed), then `os.replace`
puts it in place, so a process killed at any instant leaves either the old file or the new one;
the folder is then fsync'ed too (POSIX), so that the rename itself survives a power loss.
A write that fails (disk full, RLIMIT_FSIZE "File too large", a read-only folder) removes its
temporary file, leaves the old file as it was and raises a one-line `WriteError` naming the file.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from typing import Any, BinaryIO, Callable

import torch

from fad.errors import WriteError


def _fsync_folder(folder: str) -> None:
    """fsync the folder `folder` so that a rename inside it is on disk; skipped quietly where a
    folder cannot be opened (Windows) or fsync'ed (some network and FUSE file systems)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _atomic(path: str, write: Callable[[BinaryIO], None]) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(folder)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            reason = exc.strerror or str(exc)
            raise WriteError(f"could not write {path} ({reason}); the previous "
                             "file, if any, is unchanged: free disk space or make the folder "
                             "writable, then run again") from None
        raise


def atomic_write_text(path: str, text: str) -> None:
    """Write `text` to `path` through a temporary file and an atomic rename."""
    _atomic(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and an atomic rename."""
    _atomic(path, lambda f: f.write(data))


class _HashingWriter:
    """A write-only file that also counts and sha256-hashes the bytes passing through."""

    def __init__(self, f: BinaryIO):
        self.f, self.size, self.sha256 = f, 0, hashlib.sha256()
        self.error: OSError | None = None  # torch's zip writer hides it behind a RuntimeError

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.f.flush()


def atomic_torch_save(obj: Any, path: str) -> tuple[int, str]:
    """`torch.save(obj, path)` through a temporary file and an atomic rename; returns the
    file's size in bytes and its sha256 (hex), computed while writing."""
    writer: list[_HashingWriter] = []

    def save(f: BinaryIO) -> None:
        writer.append(_HashingWriter(f))
        try:
            torch.save(obj, writer[0])
        except RuntimeError:
            if writer[0].error is not None:
                raise writer[0].error from None
            raise

    _atomic(path, save)
    return writer[0].size, writer[0].sha256.hexdigest()
