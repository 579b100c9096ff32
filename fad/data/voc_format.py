"""The VOC devkit file format, read once for the datasets and the devkit evaluation: annotation
xml, split lists (ImageSets/Main/<split>.txt), class lists (one name a line) and the one rule
for a folder's classes when none are given (`default_voc_classes`).

Boxes are returned as written: 1-based inclusive pixel indices (xmin, ymin, xmax, ymax). The
datasets turn them into continuous coordinates (`fad.data.voc`); the evaluation keeps them, as
the devkit does. `difficult` follows the devkit (VOCreadrecxml: `str2num(difficult)`, absent =
0): an integer, non-zero = difficult; `true` / `false` in any case are read as 1 / 0.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fad.config.catalog import VOC_CLASSES
from fad.errors import DataError


@dataclass
class VOCObject:
    """One annotated object: class name, box [4] as written (1-based inclusive), difficult."""

    name: str
    box: tuple[float, float, float, float]
    difficult: bool


@dataclass
class VOCAnnotation:
    """One annotation file: <filename> and <size> when given, and its objects in file order."""

    filename: str | None
    height: int | None
    width: int | None
    objects: list[VOCObject]


def _text(node: ET.Element, tag: str, path: Path, required: bool = True) -> str | None:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        if required:
            raise DataError(f"{path}: malformed VOC annotation, missing <{tag}>; fix the file")
        return None
    return child.text.strip()


def _number(node: ET.Element, tag: str, path: Path) -> float:
    text = _text(node, tag, path)
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{path}: malformed VOC annotation, <{tag}> is {text!r}, not a number; "
                        "fix the file") from None


def parse_difficult(text: str | None, path: Path) -> bool:
    """The devkit's reading of a <difficult> text (None or empty: the tag is absent)."""
    if text is None or not text.strip():
        return False
    value = text.strip()
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    try:
        return int(value) != 0
    except ValueError:
        raise DataError(f"{path}: malformed VOC annotation, <difficult> is {value!r}; write 0 "
                        "or 1") from None


def read_voc_xml(path: str | Path) -> VOCAnnotation:
    """Read one VOC annotation file."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found; add it or remove its id from the "
                        "split file") from None
    except ET.ParseError as exc:
        raise DataError(f"{path}: malformed XML ({exc}); fix or regenerate the file") from None
    height = width = None
    size = root.find("size")
    if size is not None and _text(size, "width", path, required=False):
        width, height = int(_number(size, "width", path)), int(_number(size, "height", path))
    objects = []
    for obj in root.iter("object"):
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise DataError(f"{path}: malformed VOC annotation, <object> without <bndbox>; "
                            "fix the file")
        box = tuple(_number(bndbox, tag, path) for tag in ("xmin", "ymin", "xmax", "ymax"))
        difficult = parse_difficult(_text(obj, "difficult", path, required=False), path)
        objects.append(VOCObject(_text(obj, "name", path), box, difficult))
    return VOCAnnotation(_text(root, "filename", path, required=False), height, width, objects)


def read_split_file(path: str | Path) -> list[str]:
    """Ids listed in a split file (first word of each non-blank line); at least one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split file not found; check the VOC root (the folder holding "
                        "Annotations/ and ImageSets/) and the split name")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"{path}: split file lists no ids; add the image ids, one a line")
    return ids


def read_classes_file(path: str | Path) -> list[str]:
    """Class names, one a line (blank lines ignored); at least one, no repeats."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: class list not found; give a file with one class name a line")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names or len(set(names)) != len(names):
        raise DataError(f"{path}: needs one unique class name a line; fix the file")
    return names


@dataclass
class ClassList:
    """Class names of a VOC-format folder and where they came from (for a log line)."""

    names: list[str]
    source: str


def default_voc_classes(voc_root: str | Path,
                        parsed: Mapping[str, VOCAnnotation] | None = None) -> ClassList:
    """The classes of a VOC-format folder (the one holding Annotations/) when none are given,
    the one rule of the datasets and the evaluation (docs/data.md): `classes.txt` beside the
    data (in `voc_root`) or beside its parent folder, else the sorted object names of every
    annotation file, else the 20 VOC classes. `parsed` (file stem -> annotation) spares
    re-reading xml."""
    root = Path(voc_root)
    for path in (root / "classes.txt", root.parent / "classes.txt"):
        if path.is_file():
            return ClassList(read_classes_file(path), str(path))
    ann_dir = root / "Annotations"
    names: set[str] = set()
    for xml in sorted(ann_dir.glob("*.xml")):
        ann = (parsed or {}).get(xml.stem) or read_voc_xml(xml)
        names.update(o.name for o in ann.objects)
    if names:
        return ClassList(sorted(names), f"the object names in {ann_dir}")
    return ClassList(list(VOC_CLASSES), f"the 20 VOC classes (no classes.txt in {root} or its "
                                        "parent, no objects in its annotations)")
