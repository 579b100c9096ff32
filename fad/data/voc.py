"""VOC-format datasets: Annotations/*.xml, JPEGImages/, ImageSets/Main/<split>.txt.

Boxes follow the usual 0-based convention: an xml box (xmin, ymin, xmax, ymax), 1-based and
inclusive, becomes (xmin - 1, ymin - 1, xmax, ymax) in pixel coords. Image ids are positions
in the split file; `file_id(image_id)` gives the VOC id back.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .base import DetectionDataset, ImageRecord, Transforms
from .boxes import BoxFixes, sanitize_boxes
from fad.errors import DataError
from .image import read_image_size

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


@dataclass
class VOCObject:
    name: str
    box: tuple[float, float, float, float]  # 0-based xyxy pixels
    difficult: bool


@dataclass
class VOCAnnotation:
    filename: str | None  # <filename>, if given
    height: int | None  # <size>, if given
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


def parse_voc_xml(path: Path) -> VOCAnnotation:
    """Read one VOC annotation file."""
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file is missing; add it or remove its id") from None
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
        difficult = _text(obj, "difficult", path, required=False) in ("1", "true", "True")
        objects.append(VOCObject(_text(obj, "name", path), (box[0] - 1, box[1] - 1, box[2], box[3]),
                                 difficult))
    return VOCAnnotation(_text(root, "filename", path, required=False), height, width, objects)


def read_classes_file(path: Path) -> list[str]:
    """Class names, one a line (blank lines ignored)."""
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names or len(set(names)) != len(names):
        raise DataError(f"{path}: needs one unique class name a line; fix the file")
    return names


def read_split(path: Path) -> list[str]:
    """Ids listed in a split file (first word of each line)."""
    if not path.is_file():
        raise DataError(f"{path}: split file is missing; check DATASETS.ROOT / the VOC root "
                        "and split")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"{path}: split file lists no ids; add the image ids, one a line")
    return ids


def _image_path(root: Path, file_id: str, ann: VOCAnnotation) -> Path:
    folder = root / "JPEGImages"
    if ann.filename and (folder / ann.filename).is_file():
        return folder / ann.filename
    for suffix in IMAGE_SUFFIXES:
        if (folder / (file_id + suffix)).is_file():
            return folder / (file_id + suffix)
    return folder / (ann.filename or file_id + ".jpg")


class VOCDataset(DetectionDataset):
    """A VOC-format split. `classes` None: classes.txt beside Annotations/, else the sorted names
    found in every annotation file. Training drops difficult objects; test data keeps them with
    a `difficult` flag."""

    def __init__(self, root: str | Path, split: str, transforms: Transforms, is_train: bool,
                 classes: Sequence[str] | None = None, name: str | None = None):
        self.voc_root = Path(root)
        self.split = split
        split_file = self.voc_root / "ImageSets" / "Main" / f"{split}.txt"
        self.ids = read_split(split_file)
        ann_dir = self.voc_root / "Annotations"
        anns: dict[str, VOCAnnotation] = {}
        for file_id in self.ids:
            xml = ann_dir / f"{file_id}.xml"
            if not xml.is_file():
                raise DataError(f"{split_file}: lists id {file_id!r} but {xml} does not exist; "
                                "remove the line or add the annotation")
            anns[file_id] = parse_voc_xml(xml)
        classes_source = "the given class list"
        if classes is None and (self.voc_root / "classes.txt").is_file():
            classes = read_classes_file(self.voc_root / "classes.txt")
            classes_source = str(self.voc_root / "classes.txt")
        elif classes is None:
            classes = self._names_in_all_annotations(ann_dir, anns)
        index = {c: i for i, c in enumerate(classes)}
        fixes = BoxFixes()
        records = []
        for image_id, file_id in enumerate(self.ids):
            ann = anns[file_id]
            path = _image_path(self.voc_root, file_id, ann)
            height, width = (ann.height, ann.width) if ann.height else read_image_size(path)
            for obj in ann.objects:
                if obj.name not in index:
                    raise DataError(f"{ann_dir / (file_id + '.xml')}: unknown class {obj.name!r} "
                                    f"(not in {classes_source}); fix the name or add the class")
            boxes = torch.tensor([o.box for o in ann.objects], dtype=torch.float32).reshape(-1, 4)
            labels = torch.tensor([index[o.name] for o in ann.objects], dtype=torch.int64)
            difficult = torch.tensor([o.difficult for o in ann.objects], dtype=torch.bool)
            boxes, keep = sanitize_boxes(boxes, height, width, fixes)
            records.append(ImageRecord(path, image_id, height, width, boxes[keep], labels[keep],
                                       difficult[keep]))
        super().__init__(name or f"{self.voc_root}:{split}", list(classes), records, transforms,
                         is_train, fixes, {i: i + 1 for i in range(len(classes))})

    @staticmethod
    def _names_in_all_annotations(ann_dir: Path, anns: dict[str, VOCAnnotation]) -> list[str]:
        """Sorted object names over every xml in `ann_dir` (so all splits agree)."""
        names = set()
        for xml in ann_dir.glob("*.xml"):
            ann = anns.get(xml.stem) or parse_voc_xml(xml)
            names.update(o.name for o in ann.objects)
        if not names:
            raise DataError(f"{ann_dir}: no objects in any annotation, so no class list; add a "
                            "classes.txt (one name a line) beside Annotations/")
        return sorted(names)

    def file_id(self, image_id: int) -> str:
        """VOC id (file stem, e.g. "2007_000033") of `image_id`."""
        return self.ids[image_id]
