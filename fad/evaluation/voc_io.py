"""Files of the VOC devkit evaluation: result files, and where the split and class lists are.

Annotation xml, split and class lists are read by `fad.data.voc_format` (one reader for the
datasets and the evaluation).

Coordinates in VOC xml and in devkit result files are 1-based inclusive pixel indices
(a box covering pixels 1..100 is written `1 ... 100`). Our boxes are continuous pixel
coordinates (pixel i spans [i, i + 1)), so the data package (fad/data/voc.py) reads an xml
box as (xmin - 1, ymin - 1, xmax, ymax); `write_voc_results` is its inverse and writes a box
[x1, y1, x2, y2] as [x1 + 1, y1 + 1, x2, y2]. A box read from xml and written back is
unchanged, so a detection equal to its ground truth has devkit IoU 1.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from fad.data.voc_format import ClassList, default_voc_classes, read_classes_file
from fad.errors import EvalError
from fad.utils.io import atomic_write_text


@dataclass
class ClassDetections:
    """Detections of one class in file order: image ids [D], scores [D], boxes [D, 4]."""

    image_ids: list[str]
    scores: np.ndarray
    boxes: np.ndarray

    def subset(self, keep_ids: set[str]) -> ClassDetections:
        """The detections whose image id is in `keep_ids`, in the same order."""
        keep = np.asarray([i in keep_ids for i in self.image_ids], dtype=bool).reshape(-1)
        return ClassDetections([i for i, k in zip(self.image_ids, keep) if k],
                               self.scores[keep], self.boxes[keep])


def result_file(dets_dir: str, split: str, class_name: str) -> str:
    """Path of the devkit result file `comp4_det_<split>_<class>.txt` in `dets_dir`."""
    return os.path.join(dets_dir, f"comp4_det_{split}_{class_name}.txt")


def split_file(voc_root: str, split: str) -> str:
    """Path of the split list `voc_root/ImageSets/Main/<split>.txt`."""
    return os.path.join(voc_root, "ImageSets", "Main", f"{split}.txt")


def read_classes(voc_root: str, classes_file: str | None = None) -> ClassList:
    """Classes from `classes_file`, else the datasets' rule (`default_voc_classes`,
    docs/data.md), with where they came from."""
    if classes_file:
        return ClassList(read_classes_file(classes_file), classes_file)
    return default_voc_classes(voc_root)


def read_detections(path: str, known_ids: set[str]) -> ClassDetections:
    """Lines `image_id score xmin ymin xmax ymax` of one devkit result file."""
    if not os.path.isfile(path):
        raise EvalError(f"{path}: result file not found; write one per class (empty for a "
                        "class without detections)")
    image_ids, rows = [], []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                values = [float(v) for v in parts[1:]]
            except ValueError:
                values = []
            if len(values) != 5:
                raise EvalError(f"{path}:{n}: expected 'image_id score xmin ymin xmax ymax', "
                                f"got {line.strip()!r}")
            if parts[0] not in known_ids:
                raise EvalError(f"{path}:{n}: image {parts[0]!r} is not in the split; "
                                "evaluate with the split the detections were made on")
            image_ids.append(parts[0])
            rows.append(values)
    table = np.asarray(rows, dtype=np.float64).reshape(-1, 5)
    return ClassDetections(image_ids, table[:, 0], table[:, 1:])


def write_voc_results(dets_dir: str, split: str, classes: Sequence[str],
                      records: Iterable[tuple]) -> list[str]:
    """Write one devkit result file per class (empty ones too); return their paths.

    `records` are (file_id, label, score, x1, y1, x2, y2) with `label` a 0-based index into
    `classes` and the box in our continuous pixel coordinates; files get (x1 + 1, y1 + 1,
    x2, y2), the devkit's 1-based inclusive pixels (see the module docstring).
    """
    lines: list[list[str]] = [[] for _ in classes]
    for file_id, label, score, x1, y1, x2, y2 in records:
        if not 0 <= int(label) < len(classes):
            raise EvalError(f"label {label} is outside 0..{len(classes) - 1}; the detector and "
                            "the dataset disagree on the number of classes")
        if not file_id or any(c.isspace() for c in str(file_id)):
            raise EvalError(f"image id {file_id!r} is empty or holds whitespace; devkit files "
                            "need whitespace-free ids")
        box = " ".join(f"{v:.3f}" for v in (x1 + 1, y1 + 1, x2, y2))
        lines[int(label)].append(f"{file_id} {float(score):.9g} {box}\n")
    paths = []
    for name, class_lines in zip(classes, lines):
        path = result_file(dets_dir, split, name)
        atomic_write_text(path, "".join(class_lines))
        paths.append(path)
    return paths
