"""Check every image of a dataset before the first step, so a bad file stops a run at once.

    report = check_dataset_images(dataset, workers=0)   # 0 = one process per CPU core
    report.problems                                      # one line per bad file: path, reason, fix

Each image must exist, decode fully (truncated or damaged files fail here, not at iteration
25 000) and have the size its annotation gives. The check also counts the images the reading
converts to 8-bit RGB (grayscale, 16-bit, RGBA, palette, CMYK) and those with an EXIF
orientation tag, used as stored (`fad.data.image`; the rules are in docs/data.md). The full
decode runs in a pool of worker processes. Images found good are cached by path, file size
and mtime in `cache_dir()` (`~/.cache/fad/image_check/`, one JSON file per image folder),
outside the data, so read-only data folders work and a second run only stats the files.
`check_images(cfg, dataset, name)` is what `build_dataset` calls (DATASETS.CHECK_IMAGES);
`fad-check-data` runs the check alone. Timings for COCO are in docs/data.md.
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import torch.distributed as dist
from yacs.config import CfgNode

from fad.errors import DataError
from fad.utils.dist import get_rank, get_world_size
from fad.utils.io import atomic_write_text

from .image import ImageInfo, check_image_size, decode_image_info
from .views import DetectionConcat, DetectionSubset

logger = logging.getLogger("fad")

CACHE_VERSION = 2
POOL_MIN_IMAGES = 64  # fewer images to decode than this: decode them in this process
PROGRESS_EVERY_S = 15.0  # seconds between progress lines of a long check

# What the decode of one image gives: its ImageInfo, or the one-line reason it failed.
Decoded = Union[ImageInfo, str]


@dataclass
class CheckReport:
    """Outcome of one dataset's check: `problems` holds one line per bad image (path, reason,
    fix); `decoded` images were decoded now, `cached` ones were known good from the cache;
    `conversions` counts the good images read with a conversion to 8-bit RGB by kind, and
    `exif_oriented` those with an EXIF orientation tag (not applied)."""

    total: int
    decoded: int
    cached: int
    seconds: float
    problems: list[str] = field(default_factory=list)
    conversions: Counter = field(default_factory=Counter)
    exif_oriented: int = 0

    def rules_line(self, name: str) -> str | None:
        """One line with the counts of the pixel rules applied, or None when none was."""
        parts = []
        if self.conversions:
            kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.conversions.items()))
            parts.append(f"{sum(self.conversions.values())} image(s) converted to 8-bit RGB "
                         f"({kinds})")
        if self.exif_oriented:
            parts.append(f"{self.exif_oriented} image(s) with an EXIF orientation tag, used as "
                         "stored (COCO/VOC boxes are in stored pixel order)")
        return f"{name}: {'; '.join(parts)} (docs/data.md, bad data)" if parts else None

    def summary(self, name: str) -> str:
        """One line: the counts and the time."""
        state = (f"{len(self.problems)} bad" if self.problems
                 else "all readable, sizes match their annotations")
        return (f"{name}: {self.total} images, {state} ({self.decoded} decoded, {self.cached} "
                f"known good from the cache, {self.seconds:.1f} s)")


def cache_dir() -> Path:
    """Folder of the check's cache files: $FAD_CACHE_DIR/image_check when that is set, else
    $XDG_CACHE_HOME/fad/image_check (default ~/.cache/fad/image_check)."""
    if os.environ.get("FAD_CACHE_DIR"):
        return Path(os.environ["FAD_CACHE_DIR"]) / "image_check"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fad" / "image_check"


def image_records(dataset) -> list[tuple[Path, int, int]]:
    """(path, annotated height, width) of every image of `dataset`: a VOC/COCO dataset, or a
    subset or concatenation of them."""
    if isinstance(dataset, DetectionConcat):
        return [r for part in dataset.datasets for r in image_records(part)]
    if isinstance(dataset, DetectionSubset):
        parent = image_records(dataset.dataset)
        return [parent[i] for i in dataset.indices]
    return [(r.path, r.height, r.width) for r in dataset.records]


def _decode(path: str) -> tuple[str, Decoded]:
    """(path, its decoded ImageInfo or the DataError line); runs in a worker process."""
    try:
        return path, decode_image_info(Path(path))
    except DataError as exc:
        return path, str(exc)


def _pool_context() -> multiprocessing.context.BaseContext:
    """fork where the platform has it (workers start at once, without re-importing torch)."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else None)


def decode_all(paths: list[str], workers: int) -> dict[str, Decoded]:
    """Decode every file of `paths` with `workers` processes (in this one when few files);
    logs progress every PROGRESS_EVERY_S seconds."""
    if workers <= 1 or len(paths) < POOL_MIN_IMAGES:
        return _collect(map(_decode, paths), len(paths))
    chunk = max(1, min(64, len(paths) // (workers * 16)))
    with _pool_context().Pool(workers) as pool:
        return _collect(pool.imap_unordered(_decode, paths, chunksize=chunk), len(paths))


def _collect(results: Iterable[tuple[str, Decoded]], total: int) -> dict[str, Decoded]:
    """{path: decoded} from `results`, with a progress line every PROGRESS_EVERY_S seconds."""
    out: dict[str, Decoded] = {}
    start = last = time.monotonic()
    for path, result in results:
        out[path] = result
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY_S:
            last, done = now, len(out)
            eta = (now - start) / done * (total - done)
            logger.info("image check: %d/%d decoded, ETA %.0f s", done, total, eta)
    return out


class CheckCache:
    """The images of one folder known good, by file name -> [size, mtime_ns, height, width,
    conversion, EXIF orientation], in one JSON file under `cache_dir()`. A damaged or foreign
    file counts as empty; a cache that cannot be written is skipped with a debug line (the
    check itself never depends on it)."""

    def __init__(self, folder: str):
        digest = hashlib.sha1(folder.encode("utf-8")).hexdigest()[:16]
        self.path = cache_dir() / f"{digest}.json"
        self.folder = folder
        self.entries: dict[str, list[int]] = {}
        try:
            data = json.loads(self.path.read_text())
            if data.get("version") == CACHE_VERSION and data.get("folder") == folder:
                self.entries = dict(data["images"])
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            self.entries = {}

    def lookup(self, name: str, stat: os.stat_result) -> ImageInfo | None:
        """The cached ImageInfo of file `name` if its size and mtime are unchanged."""
        entry = self.entries.get(name)
        if entry and entry[:2] == [stat.st_size, stat.st_mtime_ns]:
            return ImageInfo(*entry[2:])
        return None

    def save(self, found: dict[str, tuple[os.stat_result, ImageInfo]]) -> None:
        """Add `found` (file name -> (stat, decoded ImageInfo)); write the file atomically."""
        if not found:
            return
        for name, (stat, info) in found.items():
            self.entries[name] = [stat.st_size, stat.st_mtime_ns, info.height, info.width,
                                  info.conversion, info.exif_orientation]
        text = json.dumps({"version": CACHE_VERSION, "folder": self.folder,
                           "images": self.entries})
        try:
            atomic_write_text(str(self.path), text)
        except OSError as exc:
            logger.debug("image check cache %s not written (%s)", self.path, exc)


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def resolve_workers(workers: int, num_images: int) -> int:
    """`workers` processes, or (0) one per CPU core this process may use, at most one per image.
    """
    if workers < 0:  # DATASETS.CHECK_WORKERS is checked when the config loads
        raise ValueError(f"resolve_workers: workers must be >= 0, got {workers}")
    if workers == 0:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
    return max(1, min(workers, num_images))


def check_records(records: Iterable[tuple[Path, int, int]], workers: int = 0) -> CheckReport:
    """Check images given as (path, annotated height, width); see `check_dataset_images`."""
    start = time.monotonic()
    records = list(records)
    absolute = [os.path.abspath(p) for p, _, _ in records]
    where = {p: os.path.split(p) for p in sorted(set(absolute))}  # path -> (folder, file name)
    caches = {folder: CheckCache(folder) for folder in {f for f, _ in where.values()}}
    stats = {p: _stat(p) for p in where}
    sizes: dict[str, Decoded] = {}
    for p, (folder, name) in where.items():
        hit = caches[folder].lookup(name, stats[p]) if stats[p] else None
        if hit is not None:
            sizes[p] = hit
    todo = [p for p in where if p not in sizes]
    cached = len(sizes)
    sizes.update(decode_all(todo, resolve_workers(workers, len(todo))))
    good: dict[str, dict[str, tuple[os.stat_result, ImageInfo]]] = {}
    for p in todo:
        if stats[p] is not None and not isinstance(sizes[p], str):
            folder, name = where[p]
            good.setdefault(folder, {})[name] = (stats[p], sizes[p])
    for folder, found in good.items():
        caches[folder].save(found)
    report = CheckReport(len(records), len(todo), cached, 0.0)
    for (path, height, width), p in zip(records, absolute):
        found = sizes[p]
        if isinstance(found, str):
            report.problems.append(found)
            continue
        try:
            check_image_size(path, (found.height, found.width), (height, width))
        except DataError as exc:
            report.problems.append(str(exc))
            continue
        if found.conversion:
            report.conversions[found.conversion] += 1
        report.exif_oriented += found.exif_orientation
    report.seconds = time.monotonic() - start
    return report


def check_dataset_images(dataset, workers: int = 0) -> CheckReport:
    """Every image of `dataset` (VOC, COCO, subset or concatenation): exists, decodes fully,
    has its annotated (height, width). `workers` processes decode (0 = one per core); images
    unchanged since a check found them good are not decoded again."""
    return check_records(image_records(dataset), workers)


def check_images(cfg: CfgNode, dataset, name: str) -> None:
    """The check of `dataset` before the first step when DATASETS.CHECK_IMAGES: each bad image
    gets an error line, then a `DataError` with the count. Under torchrun rank 0 checks and the
    other ranks take its outcome."""
    if not cfg.DATASETS.CHECK_IMAGES:
        return
    outcome: list[str | None] = [None]
    if get_rank() == 0:
        report = check_dataset_images(dataset, cfg.DATASETS.CHECK_WORKERS)
        for line in report.problems:
            logger.error(line)
        logger.info("image check: %s", report.summary(name))
        rules = report.rules_line(name)
        if rules:
            logger.warning(rules)
        if report.problems:
            outcome[0] = (f"{name}: {len(report.problems)} of {report.total} images are missing, "
                          "corrupt or not the annotated size (one line each above); replace or "
                          "fix them (fad-check-data checks alone)")
    if get_world_size() > 1:
        dist.broadcast_object_list(outcome, src=0)
    if outcome[0]:
        raise DataError(outcome[0])
