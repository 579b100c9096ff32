"""What VOC and COCO datasets share: per-image records, sample loading, the COCO ground truth."""
from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from .boxes import BoxFixes
from .image import check_image_size, read_image

logger = logging.getLogger(__name__)

# A dataset key: a plain index, or (index, seed) where the seed drives the random augmentation.
SampleKey = Union[int, tuple[int, int]]
# (uint8 image [3, H, W], boxes [K, 4], labels [K], generator or None)
#   -> (float image [3, h, w], boxes [K', 4], labels [K']) (K' < K when a crop drops boxes)
Transforms = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Union[torch.Generator, None]],
                      tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass
class ImageRecord:
    """One image's annotations in original pixel coords (boxes already clipped and sanitised).

    `difficult` is set for VOC data (bool [K]); it is None where the format has no such flag.
    """

    path: Path
    image_id: int
    height: int
    width: int
    boxes: torch.Tensor  # float32 [K, 4] xyxy
    labels: torch.Tensor  # int64 [K], 0..C-1
    difficult: torch.Tensor | None = None  # bool [K]


def unpack_key(key: SampleKey) -> tuple[int, int | None]:
    """Split a dataset key into (index, seed or None)."""
    if isinstance(key, tuple):
        return int(key[0]), int(key[1])
    return int(key), None


def quiet_coco(dataset: dict) -> COCO:
    """A pycocotools COCO over an in-memory dict, without its progress prints."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class CachedCocoGT:
    """`coco_gt()` built once by `_build_coco_gt()` and cached in `self._coco`; loader workers
    get the object without the cache."""

    _coco: COCO | None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_coco"] = None
        return state

    def coco_gt(self) -> COCO:
        """The ground truth as a pycocotools COCO (built once, then cached)."""
        if self._coco is None:
            self._coco = self._build_coco_gt()
        return self._coco

    def _build_coco_gt(self) -> COCO:
        raise NotImplementedError


class DetectionDataset(CachedCocoGT, Dataset):
    """Images + boxes from a list of `ImageRecord`s, returned as (image, target) samples.

    Samples: image float32 [3, h, w] in [0, 1]; target with `boxes` float32 [K, 4] xyxy after
    transforms, `labels` int64 [K], `image_id` int, `orig_size` / `size` int64 [2] (h, w), and
    `difficult` bool [K] for VOC test data (training drops difficult objects instead).
    """

    def __init__(self, name: str, classes: list[str], records: list[ImageRecord],
                 transforms: Transforms, is_train: bool, fixes: BoxFixes,
                 label_to_category_id: dict[int, int]):
        self.name = name
        self.classes = list(classes)
        self.records = records
        self.transforms = transforms
        self.is_train = is_train
        self.box_fixes = fixes
        self.label_to_category_id = label_to_category_id
        self._coco: COCO | None = None
        warning = fixes.message(name)
        if warning:
            logger.warning(warning)
        empty = sum(len(r.labels) == 0 for r in records)
        if empty:
            logger.info("%s: %d of %d images have no boxes (kept: they train as background and "
                        "count in the evaluation)", name, empty, len(records))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.records)

    def image_size(self, index: int) -> tuple[int, int]:
        """(height, width) of image `index` as annotated, without reading it."""
        rec = self.records[index]
        return rec.height, rec.width

    def image_id(self, index: int) -> int:
        """The `image_id` that sample `index` carries (and that `coco_gt()` uses)."""
        return self.records[index].image_id

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, dict]:
        index, seed = unpack_key(key)
        rec = self.records[index]
        image = read_image(rec.path)
        check_image_size(rec.path, tuple(image.shape[1:]), (rec.height, rec.width))
        boxes, labels, difficult = rec.boxes, rec.labels, rec.difficult
        if self.is_train and difficult is not None:
            boxes, labels, difficult = boxes[~difficult], labels[~difficult], None
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        image, boxes, labels = self.transforms(image, boxes, labels, generator)
        target = {
            "boxes": boxes,
            "labels": labels.clone(),
            "image_id": rec.image_id,
            "orig_size": torch.tensor([rec.height, rec.width], dtype=torch.int64),
            "size": torch.tensor(image.shape[1:], dtype=torch.int64),
        }
        if difficult is not None:
            target["difficult"] = difficult.clone()
        return image, target

    def _build_coco_gt(self) -> COCO:
        """Ground truth from the records; VOC difficult objects become iscrowd=1 (ignored)."""
        images, annotations = [], []
        for rec in self.records:
            images.append({"id": rec.image_id, "file_name": rec.path.name,
                           "height": rec.height, "width": rec.width})
            crowd = [False] * len(rec.labels) if rec.difficult is None else rec.difficult.tolist()
            for box, label, is_crowd in zip(rec.boxes.tolist(), rec.labels.tolist(), crowd):
                w, h = box[2] - box[0], box[3] - box[1]
                annotations.append({"id": len(annotations) + 1, "image_id": rec.image_id,
                                    "category_id": self.label_to_category_id[label],
                                    "bbox": [box[0], box[1], w, h], "area": w * h,
                                    "iscrowd": int(is_crowd)})
        categories = [{"id": self.label_to_category_id[i], "name": c}
                      for i, c in enumerate(self.classes)]
        return quiet_coco({"images": images, "annotations": annotations, "categories": categories})
