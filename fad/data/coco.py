"""COCO-format datasets (an images folder + an instances json), read with pycocotools.

Labels are contiguous 0..C-1 in category-id order; `label_to_category_id` maps them back (a
file whose category ids are not 1..C says so in one log line). Crowd boxes never reach the
model (they stay in `coco_gt()`, where COCO eval ignores them). An image id or category id
given twice is a one-line error.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import torch
from pycocotools.coco import COCO

from fad.errors import DataError

from .base import DetectionDataset, ImageRecord, Transforms, quiet_coco
from .boxes import BoxFixes, sanitize_boxes

logger = logging.getLogger("fad")


def _load_json(path: Path) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file is missing; check DATASETS.ROOT / the "
                        "path") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: malformed JSON ({exc}); fix or regenerate the file") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                             for k in ("images", "annotations", "categories")):
        raise DataError(f"{path}: not a COCO instances file (needs lists 'images', 'annotations', "
                        "'categories'); fix the file")
    return data


def _bbox_xyxy(ann: dict, path: Path) -> list[float]:
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4
            and all(isinstance(v, (int, float)) for v in bbox)):
        raise DataError(f"{path}: annotation id {ann.get('id')} has bbox {bbox!r}, expected "
                        "[x, y, w, h] numbers; fix the file")
    x, y, w, h = bbox
    return [x, y, x + w, y + h]


def _check_unique_ids(items: list[dict], what: str, path: Path) -> None:
    """A one-line DataError when an id occurs more than once among `items` ('images' or
    'categories')."""
    repeated = sorted(i for i, n in Counter(item["id"] for item in items).items() if n > 1)
    if repeated:
        more = f" (and {len(repeated) - 1} more)" if len(repeated) > 1 else ""
        raise DataError(f"{path}: id {repeated[0]} occurs more than once in '{what}'{more}; give "
                        "each entry its own id")


def _log_category_ids(categories: list[dict], path: Path) -> None:
    """One info line when the category ids are not 1..C (the labels are then 0..C-1 in id
    order, mapped back to the file's ids in the results)."""
    ids = [c["id"] for c in categories]
    if ids != list(range(1, len(ids) + 1)):
        shown = ", ".join(str(i) for i in ids[:8]) + (", ..." if len(ids) > 8 else "")
        logger.info("%s: category ids %s are not 1..%d: labels 0..%d follow the id order and "
                    "map back to these ids in the results", path, shown, len(ids), len(ids) - 1)


class COCODataset(DetectionDataset):
    """A COCO-format split: images under `images_dir`, annotations in `ann_file`."""

    def __init__(self, images_dir: str | Path, ann_file: str | Path, transforms: Transforms,
                 is_train: bool, name: str | None = None):
        self.images_dir = Path(images_dir)
        self.ann_file = Path(ann_file)
        data = _load_json(self.ann_file)
        try:
            categories = sorted(data["categories"], key=lambda c: c["id"])
            cat_to_label = {c["id"]: i for i, c in enumerate(categories)}
            classes = [str(c["name"]) for c in categories]
            images = sorted(data["images"], key=lambda im: im["id"])
            by_image: dict[int, list[dict]] = {im["id"]: [] for im in images}
            _check_unique_ids(images, "images", self.ann_file)
            _check_unique_ids(categories, "categories", self.ann_file)
        except (KeyError, TypeError):
            raise DataError(f"{self.ann_file}: an image or category lacks 'id' or 'name'; "
                            "fix the file") from None
        if not images:
            raise DataError(f"{self.ann_file}: lists no images; fix the file or the path")
        _log_category_ids(categories, self.ann_file)
        for ann in data["annotations"]:
            if ann.get("image_id") not in by_image:
                raise DataError(f"{self.ann_file}: annotation id {ann.get('id')} refers to unknown "
                                f"image id {ann.get('image_id')}; fix the file")
            if ann.get("category_id") not in cat_to_label:
                raise DataError(f"{self.ann_file}: annotation id {ann.get('id')} has unknown class "
                                f"(category id {ann.get('category_id')} not in 'categories'); "
                                "fix the file")
            by_image[ann["image_id"]].append(ann)
        fixes = BoxFixes()
        records = []
        for im in images:
            try:
                path = self.images_dir / im["file_name"]
                height, width = int(im["height"]), int(im["width"])
            except (KeyError, TypeError, ValueError):
                raise DataError(f"{self.ann_file}: image id {im['id']} needs 'file_name', "
                                "'height', 'width'; fix the file") from None
            anns = [a for a in by_image[im["id"]] if not a.get("iscrowd", 0)]
            boxes = torch.tensor([_bbox_xyxy(a, self.ann_file) for a in anns],
                                 dtype=torch.float32).reshape(-1, 4)
            labels = torch.tensor([cat_to_label[a["category_id"]] for a in anns], dtype=torch.int64)
            boxes, keep = sanitize_boxes(boxes, height, width, fixes)
            records.append(ImageRecord(path, int(im["id"]), height, width, boxes[keep],
                                       labels[keep]))
        super().__init__(name or str(self.ann_file), classes, records, transforms, is_train, fixes,
                         {label: cat for cat, label in cat_to_label.items()})

    def _build_coco_gt(self) -> COCO:
        """The annotation file itself, so results evaluate exactly as with the official tools."""
        return quiet_coco(_load_json(self.ann_file))
