"""VOC-format datasets: Annotations/*.xml, JPEGImages/, ImageSets/Main/<split>.txt.

The files are read by `voc_format`. Boxes follow the usual 0-based convention: an xml box
(xmin, ymin, xmax, ymax), 1-based and inclusive, becomes (xmin - 1, ymin - 1, xmax, ymax) in
pixel coords. Image ids are positions in the split file; `file_id(image_id)` gives the VOC id
back. An xml without <size> takes the size from the image file's header (counted in one log
line).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from fad.errors import DataError

from .base import DetectionDataset, ImageRecord, Transforms
from .boxes import BoxFixes, sanitize_boxes
from .image import read_image_size
from .voc_format import VOCAnnotation, default_voc_classes, read_split_file, read_voc_xml

logger = logging.getLogger("fad")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


def _image_path(root: Path, file_id: str, ann: VOCAnnotation) -> Path:
    folder = root / "JPEGImages"
    if ann.filename and (folder / ann.filename).is_file():
        return folder / ann.filename
    for suffix in IMAGE_SUFFIXES:
        if (folder / (file_id + suffix)).is_file():
            return folder / (file_id + suffix)
    return folder / (ann.filename or file_id + ".jpg")


class VOCDataset(DetectionDataset):
    """A VOC-format split. `classes` None: the rule of `voc_format.default_voc_classes`
    (docs/data.md). Training drops difficult objects; test data keeps them with a `difficult`
    flag."""

    def __init__(self, root: str | Path, split: str, transforms: Transforms, is_train: bool,
                 classes: Sequence[str] | None = None, name: str | None = None):
        self.voc_root = Path(root)
        self.split = split
        split_file = self.voc_root / "ImageSets" / "Main" / f"{split}.txt"
        self.ids = read_split_file(split_file)
        ann_dir = self.voc_root / "Annotations"
        anns: dict[str, VOCAnnotation] = {}
        for file_id in self.ids:
            xml = ann_dir / f"{file_id}.xml"
            if not xml.is_file():
                raise DataError(f"{split_file}: lists id {file_id!r} but {xml} does not exist; "
                                "remove the line or add the annotation")
            anns[file_id] = read_voc_xml(xml)
        classes_source = "the given class list"
        if classes is None:
            found = default_voc_classes(self.voc_root, anns)
            classes, classes_source = found.names, found.source
            logger.info("%s: %d classes from %s", self.voc_root, len(classes), classes_source)
        index = {c: i for i, c in enumerate(classes)}
        fixes = BoxFixes()
        records = []
        no_size = 0
        for image_id, file_id in enumerate(self.ids):
            ann = anns[file_id]
            path = _image_path(self.voc_root, file_id, ann)
            no_size += not ann.height
            height, width = (ann.height, ann.width) if ann.height else read_image_size(path)
            for obj in ann.objects:
                if obj.name not in index:
                    raise DataError(f"{ann_dir / (file_id + '.xml')}: unknown class {obj.name!r} "
                                    f"(not in {classes_source}); fix the name or add the class")
            boxes = torch.tensor([(x0 - 1, y0 - 1, x1, y1) for x0, y0, x1, y1 in
                                  (o.box for o in ann.objects)], dtype=torch.float32).reshape(-1, 4)
            labels = torch.tensor([index[o.name] for o in ann.objects], dtype=torch.int64)
            difficult = torch.tensor([o.difficult for o in ann.objects], dtype=torch.bool)
            boxes, keep = sanitize_boxes(boxes, height, width, fixes)
            records.append(ImageRecord(path, image_id, height, width, boxes[keep], labels[keep],
                                       difficult[keep]))
        if no_size:
            logger.info("%s: %d of %d annotation files have no <size>; the image files' sizes "
                        "are used", ann_dir, no_size, len(self.ids))
        super().__init__(name or f"{self.voc_root}:{split}", list(classes), records, transforms,
                         is_train, fixes, {i: i + 1 for i in range(len(classes))})

    def file_id(self, image_id: int) -> str:
        """VOC id (file stem, e.g. "2007_000033") of `image_id`."""
        return self.ids[image_id]
