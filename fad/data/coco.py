"""COCO-format datasets (an images folder + an instances json), read with pycocotools.

Labels are contiguous 0..C-1 in category-id order; `label_to_category_id` maps them back.
Crowd boxes never reach the model (they stay in `coco_gt()`, where COCO eval ignores them).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from pycocotools.coco import COCO

from fad.errors import DataError

from .base import DetectionDataset, ImageRecord, Transforms, quiet_coco
from .boxes import BoxFixes, sanitize_boxes


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
        except (KeyError, TypeError):
            raise DataError(f"{self.ann_file}: an image or category lacks 'id' or 'name'; "
                            "fix the file") from None
        if not images:
            raise DataError(f"{self.ann_file}: lists no images; fix the file or the path")
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
