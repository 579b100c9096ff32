"""Files of the VOC devkit: split lists, annotation xml, class lists and result files.

Coordinates in VOC xml and in devkit result files are 1-based inclusive pixel indices
(a box covering pixels 1..100 is written `1 ... 100`). Our boxes are continuous pixel
coordinates (pixel i spans [i, i + 1)), so the data package (fad/data/voc.py) reads an xml
box as (xmin - 1, ymin - 1, xmax, ymax); `write_voc_results` is its inverse and writes a box
[x1, y1, x2, y2] as [x1 + 1, y1 + 1, x2, y2]. A box read from xml and written back is
unchanged, so a detection equal to its ground truth has devkit IoU 1.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from fad.utils.io import atomic_write_text

from fad.errors import EvalError

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


@dataclass
class VocObject:
    """One annotated object: class name, 1-based inclusive box [4] and the difficult flag."""

    name: str
    box: tuple[float, float, float, float]
    difficult: bool


@dataclass
class ClassDetections:
    """Detections of one class in file order: image ids [D], scores [D], boxes [D, 4]."""

    image_ids: list[str]
    scores: np.ndarray
    boxes: np.ndarray

    def subset(self, keep_ids: set[str]) -> "ClassDetections":
        """The detections whose image id is in `keep_ids`, in the same order."""
        keep = np.asarray([i in keep_ids for i in self.image_ids], dtype=bool).reshape(-1)
        return ClassDetections([i for i, k in zip(self.image_ids, keep) if k],
                               self.scores[keep], self.boxes[keep])


def result_file(dets_dir: str, split: str, class_name: str) -> str:
    """Path of the devkit result file `comp4_det_<split>_<class>.txt` in `dets_dir`."""
    return os.path.join(dets_dir, f"comp4_det_{split}_{class_name}.txt")


def read_split(voc_root: str, split: str) -> list[str]:
    """Image ids listed in `voc_root/ImageSets/Main/<split>.txt` (first token of each line)."""
    path = os.path.join(voc_root, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(path):
        raise EvalError(f"{path}: split file not found; check --voc-root (the folder holding "
                        "Annotations/ and ImageSets/) and --split")
    with open(path) as f:
        return [line.split()[0] for line in f if line.strip()]


def read_classes(voc_root: str, classes_file: str | None = None) -> list[str]:
    """Classes from `classes_file`, else `voc_root/classes.txt`, else the 20 VOC classes."""
    path = classes_file or os.path.join(voc_root, "classes.txt")
    if classes_file and not os.path.isfile(classes_file):
        raise EvalError(f"{classes_file}: classes file not found; give a file with one "
                        "class a line")
    if not os.path.isfile(path):
        return list(VOC_CLASSES)
    with open(path) as f:
        classes = [line.strip() for line in f if line.strip()]
    if not classes or len(set(classes)) != len(classes):
        raise EvalError(f"{path}: needs one distinct class name a line")
    return classes


def _float(node: ET.Element, tag: str, path: str) -> float:
    child = node.find(tag)
    try:
        return float(child.text)
    except (AttributeError, TypeError, ValueError):
        raise EvalError(f"{path}: an object lacks a numeric bndbox/{tag}; "
                        "fix the annotation") from None


def read_annotation(path: str) -> list[VocObject]:
    """Objects of one VOC xml file, boxes as written (1-based inclusive)."""
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise EvalError(f"{path}: annotation not found; the split file lists an image "
                        "without an xml in Annotations/") from None
    except ET.ParseError as exc:
        raise EvalError(f"{path}: malformed XML ({exc}); fix or remove the file") from None
    objects = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        box_node = obj.find("bndbox")
        if not name or box_node is None:
            raise EvalError(f"{path}: an object lacks <name> or <bndbox>; fix the annotation")
        box = tuple(_float(box_node, t, path) for t in ("xmin", "ymin", "xmax", "ymax"))
        difficult = (obj.findtext("difficult") or "0").strip() not in ("0", "")
        objects.append(VocObject(name, box, difficult))
    return objects


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
