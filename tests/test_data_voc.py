"""VOC-format parsing: boxes, difficult objects, class lists, ground truth, bad input."""
from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from conftest import voc_fixture, write_voc
from PIL import Image

from fad.config import get_cfg_defaults
from fad.data import DataError, VOCDataset, build_dataset
from fad.data.transforms import DetectionTransforms
from fad.data.voc_format import parse_difficult, read_voc_xml
from fad.evaluation.voc_eval import load_ground_truth

IDENTITY = DetectionTransforms([])
SIZE = (40, 60)


@pytest.fixture
def small_voc(tmp_path: Path) -> Path:
    return write_voc(tmp_path / "voc", {
        "a": [("dog", 1, 1, 10, 20, 0), ("cat", 5, 6, 30, 35, 1)],
        "b": [("cat", 11, 2, 60, 40, 0)],
        "empty": [],
    }, split="train", image_size=SIZE)


def test_boxes_follow_the_xml_and_difficult_is_dropped_for_training(small_voc):
    train = VOCDataset(small_voc, "train", IDENTITY, is_train=True)
    assert train.classes == ["cat", "dog"] and train.num_classes == 2
    image, target = train[0]
    assert image.dtype == torch.float32 and image.shape == (3, 40, 60)
    assert torch.equal(target["boxes"], torch.tensor([[0.0, 0.0, 10.0, 20.0]]))
    assert target["labels"].tolist() == [1] and "difficult" not in target
    assert target["orig_size"].tolist() == [40, 60] and target["size"].tolist() == [40, 60]


def test_test_split_keeps_difficult_flagged(small_voc):
    test = VOCDataset(small_voc, "train", IDENTITY, is_train=False)
    _, target = test[0]
    assert target["labels"].tolist() == [1, 0]
    assert target["difficult"].tolist() == [False, True]
    assert torch.equal(target["boxes"][1], torch.tensor([4.0, 5.0, 30.0, 35.0]))
    assert test.file_id(target["image_id"]) == "a" and test.split == "train"
    assert test.voc_root == small_voc


@pytest.mark.parametrize("text, difficult", [
    (None, False), ("", False), ("0", False), ("1", True), (" 1 ", True), ("2", True),
    ("true", True), ("False", False),
])
def test_difficult_follows_the_devkit(text, difficult):
    """Devkit rule (str2num, absent = 0): any non-zero integer is difficult."""
    assert parse_difficult(text, Path("a.xml")) is difficult


def test_dataset_and_evaluation_read_difficult_alike(tmp_path):
    root = write_voc(tmp_path / "voc", {"a": [("cat", 1, 1, 10, 10, d) for d in
                                              (0, 1, 2, "true", "false")]}, image_size=SIZE)
    xml = root / "Annotations" / "a.xml"
    xml.write_text(xml.read_text().replace("<object>", "<object><name>dog</name><bndbox><xmin>2"
                                           "</xmin><ymin>2</ymin><xmax>9</xmax><ymax>9</ymax>"
                                           "</bndbox></object><object>", 1))
    expected = [False, False, True, True, True, False]
    assert [o.difficult for o in read_voc_xml(xml).objects] == expected
    _, target = VOCDataset(root, "test", IDENTITY, is_train=False)[0]
    assert target["difficult"].tolist() == expected
    gt = load_ground_truth(str(root), ["a"], ["cat", "dog"])
    assert gt["cat"]["a"].difficult.tolist() == expected[1:]
    assert gt["dog"]["a"].difficult.tolist() == expected[:1]
    xml.write_text(xml.read_text().replace("<difficult>2<", "<difficult>yes<"))
    assert "<difficult> is 'yes'" in one_line_error(str(xml), read_voc_xml, xml)


def test_image_without_objects_loads(small_voc):
    image, target = VOCDataset(small_voc, "train", IDENTITY, is_train=True)[2]
    assert image.shape == (3, 40, 60)
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


def test_coco_gt_marks_difficult_as_crowd_and_uses_target_ids(small_voc):
    test = VOCDataset(small_voc, "train", IDENTITY, is_train=False)
    gt = test.coco_gt()
    assert gt is test.coco_gt()
    assert sorted(gt.getImgIds()) == [test[i][1]["image_id"] for i in range(3)]
    anns = gt.loadAnns(gt.getAnnIds(imgIds=[0]))
    assert [a["iscrowd"] for a in anns] == [0, 1]
    assert anns[1]["bbox"] == [4.0, 5.0, 26.0, 30.0]
    assert [a["category_id"] for a in anns] == [test.label_to_category_id[k] for k in (1, 0)]
    assert {c["name"] for c in gt.loadCats(gt.getCatIds())} == {"cat", "dog"}


def test_classes_txt_sets_order_and_given_list_wins(tmp_path):
    root = write_voc(tmp_path / "voc", {"a": [("dog", 1, 1, 5, 5, 0)]}, split="train",
                     classes=["dog", "cat", "bird"], image_size=SIZE)
    assert VOCDataset(root, "train", IDENTITY, True).classes == ["dog", "cat", "bird"]
    given = VOCDataset(root, "train", IDENTITY, True, classes=["bird", "dog"])
    assert given.classes == ["bird", "dog"] and given[0][1]["labels"].tolist() == [1]


def test_sorted_names_come_from_every_annotation_so_splits_agree(tmp_path):
    root = write_voc(tmp_path / "voc", {"a": [("zebra", 1, 1, 5, 5, 0)],
                                        "b": [("ant", 1, 1, 5, 5, 0)]}, image_size=SIZE)
    (root / "ImageSets" / "Main" / "val.txt").write_text("b\n")
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\n")
    assert VOCDataset(root, "train", IDENTITY, True).classes == ["ant", "zebra"]
    assert VOCDataset(root, "val", IDENTITY, True).classes == ["ant", "zebra"]


def test_degenerate_and_outside_boxes_are_clipped_or_dropped_with_one_warning(tmp_path, caplog):
    root = write_voc(tmp_path / "voc", {
        "a": [("dog", 1, 1, 10, 10, 0), ("dog", -5, 3, 20, 50, 0), ("dog", 9, 8, 7, 20, 0)],
        "b": [("dog", 70, 1, 90, 10, 0), ("dog", 50, 30, 70, 45, 0)],
    }, split="train", image_size=SIZE)
    with caplog.at_level(logging.WARNING, logger="fad.data.base"):
        ds = VOCDataset(root, "train", IDENTITY, True, name="bad_boxes")
    assert (ds.box_fixes.clipped, ds.box_fixes.dropped) == (2, 2)
    warnings = [r.getMessage() for r in caplog.records if "bad_boxes" in r.getMessage()]
    assert len(warnings) == 1 and "clipped 2" in warnings[0] and "dropped 2" in warnings[0]
    assert ds[0][1]["boxes"].tolist() == [[0, 0, 10, 10], [0, 2, 20, 40]]
    assert ds[1][1]["boxes"].tolist() == [[49, 29, 60, 40]]


def one_line_error(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and match in message, message
    return message


def test_missing_image(small_voc):
    (small_voc / "JPEGImages" / "b.png").unlink()
    ds = VOCDataset(small_voc, "train", IDENTITY, True)
    assert "missing" in one_line_error(str(small_voc / "JPEGImages" / "b.png"), ds.__getitem__, 1)


def test_corrupt_image_bytes(small_voc):
    path = small_voc / "JPEGImages" / "a.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    ds = VOCDataset(small_voc, "train", IDENTITY, True)
    assert "corrupt" in one_line_error(str(path), ds.__getitem__, 0)


def test_image_size_differs_from_annotation(small_voc):
    Image.new("RGB", (61, 40)).save(small_voc / "JPEGImages" / "a.png")
    ds = VOCDataset(small_voc, "train", IDENTITY, True)
    one_line_error("a.png", ds.__getitem__, 0)


def test_malformed_xml(small_voc):
    path = small_voc / "Annotations" / "b.xml"
    path.write_text("<annotation><object><name>cat</name>")
    message = one_line_error(str(path), VOCDataset, small_voc, "train", IDENTITY, True)
    assert "malformed XML" in message


def test_xml_with_non_numeric_box(small_voc):
    path = small_voc / "Annotations" / "b.xml"
    path.write_text(path.read_text().replace("<xmin>11</xmin>", "<xmin>eleven</xmin>"))
    one_line_error(str(path), VOCDataset, small_voc, "train", IDENTITY, True)


def test_unknown_class_with_given_list(small_voc):
    msg = one_line_error(str(small_voc / "Annotations" / "a.xml"), VOCDataset, small_voc, "train",
                         IDENTITY, True, classes=["cat"])
    assert "unknown class 'dog'" in msg


def test_unknown_class_with_classes_txt(small_voc):
    (small_voc / "classes.txt").write_text("dog\n")
    msg = one_line_error("unknown class 'cat'", VOCDataset, small_voc, "train", IDENTITY, True)
    assert "classes.txt" in msg


def test_split_file_lists_missing_id(small_voc):
    split = small_voc / "ImageSets" / "Main" / "train.txt"
    split.write_text(split.read_text() + "ghost\n")
    msg = one_line_error(str(split), VOCDataset, small_voc, "train", IDENTITY, True)
    assert "'ghost'" in msg


def test_missing_or_empty_split_file(small_voc):
    one_line_error("val.txt", VOCDataset, small_voc, "val", IDENTITY, True)
    (small_voc / "ImageSets" / "Main" / "val.txt").write_text("\n")
    one_line_error("lists no ids", VOCDataset, small_voc, "val", IDENTITY, True)


def _xml_objects(xml: Path) -> list[tuple[str, list[float]]]:
    root = ET.parse(xml).getroot()
    tags = ("xmin", "ymin", "xmax", "ymax")
    return [(o.findtext("name"), [float(o.find("bndbox").findtext(t)) for t in tags])
            for o in root.iter("object")]


def test_real_voc_fixture_registered_from_config():
    real_voc = voc_fixture("VOC2012")
    cfg = get_cfg_defaults()
    cfg.DATASETS.REGISTER = (f"real_mini:voc:{real_voc}:trainval",)
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 96, 160
    ds = build_dataset(cfg, ["real_mini"], is_train=False)
    ids = (real_voc / "ImageSets" / "Main" / "trainval.txt").read_text().split()
    names = sorted({n for i in ids for n, _ in _xml_objects(real_voc / "Annotations" / f"{i}.xml")})
    assert len(ds) == len(ids) == 12 and ds.classes == names and "pillow" in ds.classes
    for index in range(len(ds)):
        image, target = ds[index]
        objects = _xml_objects(real_voc / "Annotations" / f"{ds.file_id(target['image_id'])}.xml")
        with Image.open(real_voc / "JPEGImages" / f"{ds.file_id(target['image_id'])}.jpg") as img:
            assert target["orig_size"].tolist() == [img.height, img.width]
        assert len(target["boxes"]) == len(objects)
        assert [ds.classes[k] for k in target["labels"]] == [n for n, _ in objects]
        assert min(image.shape[1:]) == 96 or max(image.shape[1:]) == 160
        scale = torch.tensor(image.shape[1:]) / target["orig_size"]
        expected = torch.tensor([[b[0] - 1, b[1] - 1, b[2], b[3]] for _, b in objects])
        expected *= torch.stack([scale[1], scale[0], scale[1], scale[0]])
        assert torch.allclose(target["boxes"], expected, atol=1e-3)
