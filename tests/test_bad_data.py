"""Bad data (issue #22, fault 5): each case is handled by a rule of docs/data.md with a count in
the log, or refused with one line naming the file and the fix; never a traceback, never silent.
Every case is built by hand in tmp_path (tiny VOC and COCO folders)."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, write_voc
from PIL import Image

from fad.data import COCODataset, DataError, VOCDataset
from fad.data.check import check_dataset_images
from fad.data.image import read_image
from fad.data.voc_format import read_split_file

IDENTITY = lambda image, boxes, labels, generator: (image, boxes, labels)  # noqa: E731
H, W = 20, 30


def one_line_error(fn, *args, **kwargs) -> str:
    """The DataError message `fn` raises, asserted to be one line."""
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def save(image: Image.Image, path: Path, **kwargs) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path.name


def rgb(value: tuple[int, int, int] = (90, 120, 150)) -> Image.Image:
    return Image.fromarray(np.full((H, W, 3), value, dtype=np.uint8))


def coco(root: Path, files: list[str], sizes: dict[str, tuple[int, int]] | None = None,
         annotations: list[dict] | None = None, categories: list[dict] | None = None,
         image_ids: list[int] | None = None) -> tuple[Path, Path]:
    """A COCO set over the files already in root/images: one 2x2-px box each unless
    `annotations` is given; sizes H x W unless `sizes` says otherwise."""
    ids = image_ids or list(range(1, len(files) + 1))
    images = [{"id": i, "file_name": f, "height": (sizes or {}).get(f, (H, W))[0],
               "width": (sizes or {}).get(f, (H, W))[1]} for i, f in zip(ids, files)]
    if annotations is None:
        annotations = [{"id": i, "image_id": i, "category_id": 1, "bbox": [2, 2, 2, 2],
                        "iscrowd": 0} for i in ids]
    ann_file = root / "ann.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations,
                                    "categories": categories or [{"id": 1, "name": "thing"}]}))
    return root / "images", ann_file


def test_truncated_and_zero_byte_jpegs_are_refused_one_line_each(tmp_path):
    images = tmp_path / "images"
    names = [save(rgb(), images / f"{n}.jpg", quality=90) for n in "abc"]
    data = (images / "b.jpg").read_bytes()
    (images / "b.jpg").write_bytes(data[:len(data) // 2])
    (images / "c.jpg").write_bytes(b"")
    report = check_dataset_images(COCODataset(*coco(tmp_path, names), IDENTITY, True), workers=1)
    assert len(report.problems) == 2
    for name, line in zip("bc", report.problems):
        assert f"{name}.jpg: image file is corrupt or unreadable" in line
        assert line.endswith("replace the file") and "\n" not in line


def test_grayscale_16bit_rgba_palette_and_cmyk_become_8bit_rgb_and_are_counted(tmp_path):
    images = tmp_path / "images"
    files = [
        save(Image.fromarray(np.full((H, W), 77, np.uint8)), images / "gray.png"),
        save(Image.fromarray(np.full((H, W), 60000, np.uint16)), images / "deep.png"),
        save(Image.fromarray(np.full((H, W, 4), (10, 20, 30, 0), np.uint8)), images / "rgba.png"),
        save(rgb((0, 204, 102)).convert("P"), images / "palette.png"),  # web palette
        save(Image.new("CMYK", (W, H), (0, 255, 255, 0)), images / "cmyk.jpg", quality=100),
        save(rgb(), images / "plain.png"),
    ]
    ds = COCODataset(*coco(tmp_path, files), IDENTITY, True)
    pixels = [ds[i][0] for i in range(len(files))]
    assert all(p.dtype == torch.uint8 and p.shape == (3, H, W) for p in pixels)
    assert pixels[0].unique().tolist() == [77]
    assert pixels[1].unique().tolist() == [233]  # round(60000 * 255 / 65535) = 233, not 255
    assert pixels[2][:, 0, 0].tolist() == [10, 20, 30]  # alpha dropped
    assert pixels[3][:, 0, 0].tolist() == [0, 204, 102]
    assert (pixels[4][:, 0, 0] - torch.tensor([255, 0, 0])).abs().max() <= 3  # red, JPEG-lossy
    report = check_dataset_images(ds, workers=1)
    assert not report.problems
    assert dict(report.conversions) == {"grayscale": 1, "16-bit": 1, "RGBA": 1, "palette": 1,
                                        "CMYK": 1}
    line = report.rules_line("shop")
    assert line.startswith("shop: 5 image(s) converted to 8-bit RGB (1 16-bit, 1 CMYK, 1 RGBA, "
                           "1 grayscale, 1 palette)")


def test_a_float_image_is_refused_in_one_line(tmp_path):
    path = tmp_path / "images" / "f.tif"
    save(Image.fromarray(np.zeros((H, W), np.float32)), path)
    message = one_line_error(read_image, path)
    assert message.startswith(f"{path}: 32-bit float image; save it as 8-bit")
    ds = COCODataset(*coco(tmp_path, ["f.tif"]), IDENTITY, True)
    report = check_dataset_images(ds, workers=1)
    assert len(report.problems) == 1 and "32-bit float image" in report.problems[0]


def test_exif_orientation_is_not_applied_and_is_counted(tmp_path):
    images = tmp_path / "images"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    files = [save(rgb(), images / "turned.jpg", exif=exif), save(rgb(), images / "plain.jpg")]
    ds = COCODataset(*coco(tmp_path, files), IDENTITY, True)
    assert ds[0][0].shape == (3, H, W)  # the stored pixels, as the annotation's size says
    report = check_dataset_images(ds, workers=1)
    assert not report.problems and report.exif_oriented == 1
    assert "1 image(s) with an EXIF orientation tag, used as stored" in report.rules_line("s")


def test_the_rule_counts_survive_the_cache(tmp_path):
    images = tmp_path / "images"
    files = [save(Image.fromarray(np.full((H, W), 7, np.uint8)), images / "g.png")]
    ds = COCODataset(*coco(tmp_path, files), IDENTITY, True)
    first, second = (check_dataset_images(ds, workers=1) for _ in range(2))
    assert (first.decoded, second.cached) == (1, 1)
    assert first.conversions == second.conversions == {"grayscale": 1}


def test_voc_xml_without_size_uses_the_image_and_says_so(tmp_path, caplog):
    root = write_voc(tmp_path / "voc", {"a": [("dog", 1, 1, 5, 5, 0)],
                                        "b": [("dog", 1, 1, 5, 5, 0)]}, split="train",
                     image_size=(H, W))
    xml = root / "Annotations" / "a.xml"
    xml.write_text(xml.read_text().replace(
        f"<size><width>{W}</width><height>{H}</height><depth>3</depth></size>", ""))
    with caplog.at_level(logging.INFO, logger="fad"):
        ds = VOCDataset(root, "train", IDENTITY, True)
    assert ds.image_size(0) == (H, W)
    assert "1 of 2 annotation files have no <size>; the image files' sizes are used" in caplog.text


def test_voc_size_that_disagrees_with_the_image_is_refused(tmp_path):
    root = write_voc(tmp_path / "voc", {"a": [("dog", 1, 1, 5, 5, 0)]}, split="train",
                     image_size=(H, W))
    xml = root / "Annotations" / "a.xml"
    xml.write_text(xml.read_text().replace(f"<height>{H}</height>", "<height>99</height>"))
    report = check_dataset_images(VOCDataset(root, "train", IDENTITY, True), workers=1)
    assert report.problems == [f"{root / 'JPEGImages' / 'a.png'}: image is {H}x{W} (h x w) but "
                               f"its annotation says 99x{W}; fix the annotation"]


def test_outside_reversed_and_zero_area_boxes_follow_the_rules_with_counts(tmp_path, caplog):
    root = write_voc(tmp_path / "voc", {  # 1-based inclusive: xml (x0, y0, x1, y1) -> (x0-1, ...)
        "a": [("dog", 1, 1, 10, 10, 0),    # kept as is
              ("dog", -5, 3, 20, 50, 0),   # clipped to (0, 2, 20, 20)
              ("dog", 9, 8, 7, 15, 0)],    # reversed: x1 < x0
        "b": [("dog", 5, 5, 4, 10, 0),     # zero width
              ("dog", 40, 1, 50, 10, 0)],  # wholly right of the 30-px-wide image
    }, split="train", image_size=(H, W))
    with caplog.at_level(logging.WARNING, logger="fad"):
        ds = VOCDataset(root, "train", IDENTITY, True, name="boxes")
    assert ds[0][1]["boxes"].tolist() == [[0, 0, 10, 10], [0, 2, 20, 20]]
    assert ds[1][1]["boxes"].shape == (0, 4)
    assert ("boxes: clipped 1 box(es) to the image in 1 image(s); dropped 3 box(es) in 2 image(s) "
            "(1 reversed, 1 of zero area, 1 wholly outside the image); check the annotations"
            ) in caplog.text


def test_coco_reversed_and_zero_area_boxes_are_counted(tmp_path, caplog):
    save(rgb(), tmp_path / "images" / "a.png")
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": b, "iscrowd": 0}
            for b in ([2, 2, 5, 5], [2, 2, 0, 5], [8, 2, -3, 5])]
    with caplog.at_level(logging.WARNING, logger="fad"):
        ds = COCODataset(*coco(tmp_path, ["a.png"], annotations=anns), IDENTITY, True, name="c")
    assert (ds.box_fixes.zero_area, ds.box_fixes.reversed, len(ds.records[0].labels)) == (1, 1, 1)
    assert "c: dropped 2 box(es) in 1 image(s) (1 reversed, 1 of zero area)" in caplog.text


def test_unknown_class_is_refused_naming_the_file(tmp_path):
    root = write_voc(tmp_path / "voc", {"a": [("yeti", 1, 1, 5, 5, 0)]}, split="train",
                     classes=["dog"], image_size=(H, W))
    message = one_line_error(VOCDataset, root, "train", IDENTITY, True)
    assert message.startswith(f"{root / 'Annotations' / 'a.xml'}: unknown class 'yeti'")
    save(rgb(), tmp_path / "images" / "a.png")
    anns = [{"id": 1, "image_id": 1, "category_id": 9, "bbox": [1, 1, 4, 4], "iscrowd": 0}]
    images, ann_file = coco(tmp_path, ["a.png"], annotations=anns)
    message = one_line_error(COCODataset, images, ann_file, IDENTITY, True)
    assert message.startswith(f"{ann_file}: annotation id 1 has unknown class (category id 9")


def test_coco_missing_image_file_is_refused_by_the_check(tmp_path):
    save(rgb(), tmp_path / "images" / "a.png")
    ds = COCODataset(*coco(tmp_path, ["a.png", "gone.png"]), IDENTITY, True)
    report = check_dataset_images(ds, workers=1)
    assert report.problems == [f"{tmp_path / 'images' / 'gone.png'}: image file is missing; add "
                               "it or remove its id/annotation"]


def test_coco_duplicate_ids_are_refused(tmp_path):
    for name in ("a.png", "b.png"):
        save(rgb(), tmp_path / "images" / name)
    images, ann_file = coco(tmp_path, ["a.png", "b.png"], image_ids=[4, 4])
    message = one_line_error(COCODataset, images, ann_file, IDENTITY, True)
    assert message == (f"{ann_file}: id 4 occurs more than once in 'images'; give each entry its "
                       "own id")
    cats = [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]
    images, ann_file = coco(tmp_path, ["a.png"], categories=cats)
    assert "id 1 occurs more than once in 'categories'" in one_line_error(
        COCODataset, images, ann_file, IDENTITY, True)


def test_non_contiguous_category_ids_map_to_contiguous_labels_and_say_so(tmp_path, caplog):
    save(rgb(), tmp_path / "images" / "a.png")
    cats = [{"id": 7, "name": "kite"}, {"id": 3, "name": "boat"}]
    anns = [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 4, 4], "iscrowd": 0}]
    with caplog.at_level(logging.INFO, logger="fad"):
        ds = COCODataset(*coco(tmp_path, ["a.png"], annotations=anns, categories=cats),
                         IDENTITY, True)
    assert ds.classes == ["boat", "kite"] and ds.label_to_category_id == {0: 3, 1: 7}
    assert ds[0][1]["labels"].tolist() == [1]
    assert "category ids 3, 7 are not 1..2: labels 0..1 follow the id order" in caplog.text


def test_images_without_annotations_are_kept_and_counted(tmp_path, caplog):
    for name in ("a.png", "b.png", "c.png"):
        save(rgb(), tmp_path / "images" / name)
    anns = [{"id": 1, "image_id": 2, "category_id": 1, "bbox": [1, 1, 4, 4], "iscrowd": 0}]
    with caplog.at_level(logging.INFO, logger="fad"):
        ds = COCODataset(*coco(tmp_path, ["a.png", "b.png", "c.png"], annotations=anns),
                         IDENTITY, True, name="sparse")
    assert len(ds) == 3 and ds[0][1]["boxes"].shape == (0, 4)
    assert "sparse: 2 of 3 images have no boxes (kept" in caplog.text


def test_an_empty_split_file_is_refused(tmp_path):
    split = tmp_path / "train.txt"
    split.write_text("\n  \n")
    assert one_line_error(read_split_file, split) == (
        f"{split}: split file lists no ids; add the image ids, one a line")


def test_check_data_tool_reports_rules_and_refusals_without_a_traceback(tmp_path):
    images = tmp_path / "shop" / "images"
    files = [save(Image.fromarray(np.full((H, W), 60000, np.uint16)), images / "deep.png"),
             save(rgb(), images / "bad.jpg")]
    (images / "bad.jpg").write_bytes(b"")
    _, ann_file = coco(tmp_path / "shop", files)
    register = f"('shop:coco:{images},{ann_file}',)"
    run = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "check_data.py"), "DATASETS.REGISTER",
         register, "DATASETS.TRAIN", "('shop',)", "DATASETS.TEST", "('shop',)"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    out = run.stdout + run.stderr
    assert run.returncode == 2 and "Traceback" not in out, out[-2000:]
    assert "shop: 1 image(s) converted to 8-bit RGB (1 16-bit)" in out
    assert f"{images / 'bad.jpg'}: image file is corrupt or unreadable" in out
    assert run.stderr.strip().splitlines()[-1].startswith("error: 1 of 2 images are missing")
