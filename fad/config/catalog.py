"""Dataset catalog: names -> format and paths under `cfg.DATASETS.ROOT`.

Built-in names follow the layout in datasets/README.md; `cfg.DATASETS.REGISTER` adds names
from the config as "name:format:path[:split]" (format voc or coco; a coco path is
"images_dir,ann.json"; relative paths resolve under DATASETS.ROOT; a voc split defaults to
trainval). An unknown name or a malformed entry is a one-line ConfigError.
"""
from __future__ import annotations

import difflib
import os
from collections.abc import Iterable

from yacs.config import CfgNode

from fad.errors import ConfigError

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

# The folders tools/make_synthetic_data.py writes under its --out (= DATASETS.ROOT).
SYNTHETIC_VOC_DIR = "synthetic_voc"
SYNTHETIC_COCO_DIR = "synthetic_coco"


def _builtin() -> dict[str, dict]:
    """Built-in entries with paths relative to DATASETS.ROOT."""
    table: dict[str, dict] = {}
    for year, splits in (("2007", ("train", "val", "trainval", "test")),
                         ("2012", ("train", "val", "trainval"))):
        for split in splits:
            table[f"voc_{year}_{split}"] = {"format": "voc", "root": f"VOC{year}", "split": split,
                                            "classes": VOC_CLASSES}
    for split in ("train", "val"):
        table[f"coco_2017_{split}"] = {"format": "coco", "images": f"coco/{split}2017",
                                       "ann_file": f"coco/annotations/instances_{split}2017.json"}
        table[f"synthetic_voc_{split}"] = {"format": "voc", "root": SYNTHETIC_VOC_DIR,
                                           "split": split, "classes": None, "synthetic": True}
        table[f"synthetic_coco_{split}"] = {
            "format": "coco", "images": f"{SYNTHETIC_COCO_DIR}/images/{split}",
            "ann_file": f"{SYNTHETIC_COCO_DIR}/annotations/instances_{split}.json",
            "synthetic": True}
    return table


def _parse_registered(entry: str) -> tuple[str, dict]:
    """One DATASETS.REGISTER entry -> (name, catalog entry with paths as written)."""
    if not isinstance(entry, str):
        raise ConfigError(f"bad DATASETS.REGISTER entry {entry!r}: entries are strings; write "
                          "DATASETS.REGISTER \"('name:format:path',)\"")
    parts = entry.split(":")
    usage = ("expected 'name:voc:voc_root[:split]' or 'name:coco:images_dir,ann.json' in "
             "DATASETS.REGISTER")
    if len(parts) not in (3, 4) or not parts[0] or not parts[2]:
        raise ConfigError(f"bad DATASETS.REGISTER entry {entry!r}: {usage}")
    name, fmt, path = parts[:3]
    if fmt == "voc":
        split = parts[3] if len(parts) == 4 and parts[3] else "trainval"
        return name, {"format": "voc", "root": path, "split": split, "classes": None}
    if fmt == "coco":
        paths = path.split(",")
        if len(parts) == 4 or len(paths) != 2 or not all(paths):
            raise ConfigError(f"bad DATASETS.REGISTER entry {entry!r}: {usage}")
        return name, {"format": "coco", "images": paths[0], "ann_file": paths[1]}
    raise ConfigError(f"bad DATASETS.REGISTER entry {entry!r}: format must be voc or coco; "
                      f"{usage}")


def catalog(cfg: CfgNode) -> dict[str, dict]:
    """Every known name (built-in and registered) -> entry with paths relative as written."""
    table = _builtin()
    for entry in cfg.DATASETS.REGISTER:
        name, spec = _parse_registered(entry)
        if name in table:
            raise ConfigError(f"DATASETS.REGISTER entry {entry!r}: name {name!r} is already in "
                              "the catalog; pick another name")
        table[name] = spec
    return table


def resolve(name: str, cfg: CfgNode) -> dict:
    """Catalog entry of `name` with absolute-or-ROOT-relative paths joined under DATASETS.ROOT.

    Returns {"name", "format": "voc"|"coco", "synthetic": bool} plus, for voc, "root" (the
    folder holding Annotations/), "split" and "classes" (a tuple, or None = classes.txt or the
    names in the annotations); for coco, "images" (folder) and "ann_file" (json).
    """
    table = catalog(cfg)
    if name not in table:
        raise _unknown(name, table)
    entry = dict(table[name])
    for key in ("root", "images", "ann_file"):
        if key in entry:
            entry[key] = os.path.join(cfg.DATASETS.ROOT, entry[key])
    entry["name"] = name
    entry.setdefault("synthetic", False)
    return entry


def check_dataset_names(cfg: CfgNode, names: Iterable[str]) -> None:
    """A one-line ConfigError unless DATASETS.REGISTER is well formed and every name is known."""
    table = catalog(cfg)
    for name in names:
        if name not in table:
            raise _unknown(name, table)


def _unknown(name: str, table: dict[str, dict]) -> ConfigError:
    """The error of a dataset name absent from the catalog, with the closest known name."""
    close = difflib.get_close_matches(name, list(table), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown dataset {name!r}{hint}; known names: {', '.join(sorted(table))} "
                       "(or add one with DATASETS.REGISTER)")
