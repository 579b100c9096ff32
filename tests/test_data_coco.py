"""COCO-format parsing: contiguous labels, crowd boxes, empty images, bad input, the catalog."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fad.config import get_cfg_defaults
from fad.config.catalog import VOC_CLASSES, resolve
from fad.data import COCODataset, DataError, build_dataset
from fad.data.transforms import DetectionTransforms

IDENTITY = DetectionTransforms([])


def write_coco(root: Path) -> tuple[Path, Path]:
    """Three 30x50 images; category ids 3 and 7 (not contiguous); a crowd box; an empty image."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    for name in ("x.png", "y.png", "z.png"):
        Image.fromarray(np.zeros((30, 50, 3), dtype=np.uint8)).save(images_dir / name)
    data = {
        "images": [{"id": 12, "file_name": "y.png", "height": 30, "width": 50},
                   {"id": 5, "file_name": "x.png", "height": 30, "width": 50},
                   {"id": 20, "file_name": "z.png", "height": 30, "width": 50}],
        "categories": [{"id": 7, "name": "kite"}, {"id": 3, "name": "boat"}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 7, "bbox": [1, 2, 10, 20], "iscrowd": 0},
            {"id": 2, "image_id": 5, "category_id": 3, "bbox": [0, 0, 50, 30], "iscrowd": 1},
            {"id": 3, "image_id": 12, "category_id": 3, "bbox": [40, 20, 20, 20], "iscrowd": 0},
            {"id": 4, "image_id": 12, "category_id": 3, "bbox": [5, 5, 0, 8], "iscrowd": 0},
        ],
    }
    ann_file = root / "instances.json"
    ann_file.write_text(json.dumps(data))
    return images_dir, ann_file


@pytest.fixture
def small_coco(tmp_path: Path) -> tuple[Path, Path]:
    return write_coco(tmp_path / "coco")


def test_labels_are_contiguous_and_map_back_to_category_ids(small_coco):
    ds = COCODataset(*small_coco, IDENTITY, is_train=True)
    assert ds.classes == ["boat", "kite"] and ds.num_classes == 2
    assert ds.label_to_category_id == {0: 3, 1: 7}
    assert [ds.image_id(i) for i in range(len(ds))] == [5, 12, 20]
    image, target = ds[0]
    assert image.shape == (3, 30, 50) and target["image_id"] == 5
    assert target["labels"].tolist() == [1]  # the crowd box is not a training target
    assert torch.equal(target["boxes"], torch.tensor([[1.0, 2.0, 11.0, 22.0]]))


def test_boxes_clipped_degenerate_dropped_and_counted(small_coco):
    ds = COCODataset(*small_coco, IDENTITY, is_train=False)
    assert (ds.box_fixes.clipped, ds.box_fixes.dropped) == (1, 1)
    assert ds[1][1]["boxes"].tolist() == [[40.0, 20.0, 50.0, 30.0]]


def test_image_without_objects(small_coco):
    _, target = COCODataset(*small_coco, IDENTITY, is_train=True)[2]
    assert target["boxes"].shape == (0, 4) and target["labels"].dtype == torch.int64


def test_coco_gt_is_the_annotation_file(small_coco):
    ds = COCODataset(*small_coco, IDENTITY, is_train=False)
    gt = ds.coco_gt()
    assert gt is ds.coco_gt() and sorted(gt.getImgIds()) == [5, 12, 20]
    assert len(gt.getAnnIds()) == 4 and gt.anns[2]["iscrowd"] == 1
    assert set(ds.label_to_category_id.values()) == set(gt.getCatIds())


def _one_line(match: str, *args) -> None:
    with pytest.raises(DataError) as info:
        COCODataset(*args, IDENTITY, is_train=True)
    assert "\n" not in str(info.value) and match in str(info.value), str(info.value)


def test_malformed_json(small_coco):
    images_dir, ann_file = small_coco
    ann_file.write_text('{"images": [')
    _one_line(str(ann_file), images_dir, ann_file)


def test_json_without_coco_keys(small_coco):
    images_dir, ann_file = small_coco
    ann_file.write_text('{"images": []}')
    _one_line(str(ann_file), images_dir, ann_file)


def test_json_without_images(small_coco):
    images_dir, ann_file = small_coco
    ann_file.write_text('{"images": [], "annotations": [], "categories": []}')
    _one_line("no images", images_dir, ann_file)


def test_unknown_category(small_coco):
    images_dir, ann_file = small_coco
    data = json.loads(ann_file.read_text())
    data["annotations"][0]["category_id"] = 99
    ann_file.write_text(json.dumps(data))
    _one_line("unknown class", images_dir, ann_file)


def test_bad_bbox(small_coco):
    images_dir, ann_file = small_coco
    data = json.loads(ann_file.read_text())
    data["annotations"][0]["bbox"] = [1, 2, 3]
    ann_file.write_text(json.dumps(data))
    _one_line(str(ann_file), images_dir, ann_file)


def test_missing_annotation_file(tmp_path):
    _one_line(str(tmp_path / "nope.json"), tmp_path, tmp_path / "nope.json")


def test_catalog_resolves_builtin_and_registered_names():
    cfg = get_cfg_defaults()
    cfg.DATASETS.ROOT = "/data"
    cfg.DATASETS.REGISTER = ("mine:coco:imgs,ann/x.json", "other:voc:/abs/VOC", "v:voc:rel:val")
    assert resolve("voc_2007_test", cfg) == {
        "name": "voc_2007_test", "format": "voc", "root": "/data/VOC2007", "split": "test",
        "classes": VOC_CLASSES, "synthetic": False}
    assert len(VOC_CLASSES) == 20
    coco = resolve("coco_2017_val", cfg)
    assert coco["images"] == "/data/coco/val2017"
    assert coco["ann_file"] == "/data/coco/annotations/instances_val2017.json"
    syn = resolve("synthetic_coco_train", cfg)
    assert syn["synthetic"]
    assert syn["ann_file"] == "/data/synthetic_coco/annotations/instances_train.json"
    assert resolve("synthetic_voc_val", cfg)["root"] == "/data/synthetic_voc"
    mine, other = resolve("mine", cfg), resolve("other", cfg)
    assert (mine["format"], mine["images"]) == ("coco", "/data/imgs")
    assert mine["ann_file"] == "/data/ann/x.json"
    assert (other["root"], other["split"]) == ("/abs/VOC", "trainval")
    assert resolve("v", cfg)["split"] == "val" and resolve("v", cfg)["classes"] is None


@pytest.mark.parametrize("entry", ["bad", "x:yolo:/p", "x:coco:one_path", "voc_2007_test:voc:/p"])
def test_catalog_rejects_bad_entries(entry):
    cfg = get_cfg_defaults()
    cfg.DATASETS.REGISTER = (entry,)
    with pytest.raises(ValueError, match="DATASETS.REGISTER"):
        resolve("x", cfg)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError) as info:
        resolve("voc_2013_train", get_cfg_defaults())
    assert "voc_2012_trainval" in str(info.value) and "synthetic_coco_val" in str(info.value)


def test_registered_coco_folder_builds(small_coco):
    images_dir, ann_file = small_coco
    cfg = get_cfg_defaults()
    cfg.DATASETS.REGISTER = (f"tiny:coco:{images_dir},{ann_file}",)
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 60, 200
    ds = build_dataset(cfg, ["tiny"], is_train=False)
    image, target = ds[0]
    assert image.shape == (3, 60, 100) and target["size"].tolist() == [60, 100]
    assert torch.allclose(target["boxes"], torch.tensor([[2.0, 4.0, 22.0, 44.0]]))
