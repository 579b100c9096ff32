"""run_evaluation (rescaling, result files, COCO + VOC metrics) and the metrics tables."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import write_voc
from pycocotools.coco import COCO

from fad.evaluation import EvalError, evaluate_voc, format_per_class, format_table, run_evaluation

# original (file) frame, continuous xyxy as the data package reads VOC xml
# (xmin - 1, ymin - 1, xmax, ymax)
OBJECTS = {
    1: [(0, 10.0, 20.0, 69.0, 79.0, False), (1, 100.0, 40.0, 139.0, 159.0, False)],
    2: [(0, 30.0, 30.0, 89.0, 69.0, False), (1, 0.0, 0.0, 19.0, 19.0, True)],
}
FILE_IDS = {1: "000001", 2: "000002"}
CATEGORY_IDS = {0: 3, 1: 8}
ORIG_HW = (160, 200)


class FakeCocoDataset:
    """The evaluation-facing attributes of a COCO-format test dataset."""

    classes = ["cat", "dog"]
    label_to_category_id = CATEGORY_IDS

    def coco_gt(self) -> COCO:
        anns = [{"id": n, "image_id": i, "category_id": CATEGORY_IDS[c],
                 "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                 "iscrowd": int(d)}
                for n, (i, (c, x1, y1, x2, y2, d)) in enumerate(
                    ((i, o) for i, objs in OBJECTS.items() for o in objs), 1)]
        coco = COCO()
        images = [{"id": i, "height": ORIG_HW[0], "width": ORIG_HW[1]} for i in OBJECTS]
        categories = [{"id": v, "name": self.classes[k]} for k, v in CATEGORY_IDS.items()]
        coco.dataset = {"images": images, "annotations": anns, "categories": categories}
        coco.createIndex()
        return coco


class FakeVocDataset(FakeCocoDataset):
    """Adds the VOC attributes: voc_root, split, file_id."""

    def __init__(self, voc_root: Path, split: str = "test"):
        self.voc_root = str(voc_root)
        self.split = split

    def file_id(self, image_id: int) -> str:
        return FILE_IDS[image_id]


def write_voc_folder(root: Path) -> Path:
    """OBJECTS as VOC annotations (xml boxes are 1-based: xmin + 1, ymin + 1, xmax, ymax)."""
    images = {FILE_IDS[i]: [(FakeCocoDataset.classes[c], int(x1) + 1, int(y1) + 1, int(x2),
                             int(y2), d) for c, x1, y1, x2, y2, d in objs]
              for i, objs in OBJECTS.items()}
    return write_voc(root, images)


def predictions(scale: float = 2.0, drop_last: bool = False) -> list[tuple[dict, dict]]:
    """Ground truth as detections, in a frame resized by `scale` (the model's input frame)."""
    pairs = []
    for image_id, objs in OBJECTS.items():
        keep = [o for o in objs if not o[5]]
        if drop_last and image_id == 2:
            keep = []
        boxes = torch.tensor([o[1:5] for o in keep], dtype=torch.float32).reshape(-1, 4) * scale
        target = {"image_id": image_id, "orig_size": torch.tensor(ORIG_HW),
                  "size": torch.tensor([int(ORIG_HW[0] * scale), int(ORIG_HW[1] * scale)])}
        output = {"boxes": boxes, "scores": torch.linspace(0.9, 0.5, len(keep)),
                  "labels": torch.tensor([o[0] for o in keep], dtype=torch.int64)}
        pairs.append((target, output))
    return pairs


def test_coco_dataset_rescales_and_writes(tmp_path: Path):
    metrics = run_evaluation(FakeCocoDataset(), predictions(), str(tmp_path))
    assert metrics["AP"] == pytest.approx(100.0) and metrics["AP50"] == pytest.approx(100.0)
    assert "VOC_mAP" not in metrics
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    results = json.loads((tmp_path / "coco_results.json").read_text())
    first = [r for r in results if r["image_id"] == 1 and r["category_id"] == 8][0]
    assert first["bbox"] == pytest.approx([100.0, 40.0, 39.0, 119.0])
    assert {r["category_id"] for r in results} == {3, 8}
    assert not list(tmp_path.glob(".tmp-*"))


def test_missed_image_lowers_recall(tmp_path: Path):
    metrics = run_evaluation(FakeCocoDataset(), predictions(drop_last=True), str(tmp_path))
    # 3 non-crowd objects, 2 found: cat recall 1/2, dog recall 1 -> AR100 (1/2 + 1) / 2
    assert metrics["AR100"] == pytest.approx(75.0)


def test_voc_dataset_gets_devkit_files_and_voc_map(tmp_path: Path):
    dataset = FakeVocDataset(write_voc_folder(tmp_path / "VOC2012"))
    out = tmp_path / "out"
    metrics = run_evaluation(dataset, predictions(scale=0.5, drop_last=True), str(out))
    # devkit files: 1-based inclusive coordinates in the original frame
    cat_lines = (out / "voc_results" / "comp4_det_test_cat.txt").read_text().split("\n")
    assert cat_lines[0].split()[0] == "000001"
    assert [float(v) for v in cat_lines[0].split()[2:]] == pytest.approx([11.0, 21.0, 69.0, 79.0])
    # cat: 1 of 2 found -> AP 50; dog: the only object of image 2 is difficult -> 1 of 1 -> AP 100
    assert metrics["VOC_per_class"] == {"cat": pytest.approx(50.0), "dog": pytest.approx(100.0)}
    assert metrics["VOC_mAP"] == pytest.approx(75.0)
    assert metrics["VOC_no_gt_classes"] == [] and metrics["VOC_07_metric"] is False
    assert json.loads((out / "metrics.json").read_text()) == metrics
    direct = evaluate_voc(dataset.voc_root, "test", str(out / "voc_results"), dataset.classes)
    assert direct["mAP"] == pytest.approx(metrics["VOC_mAP"])


def test_voc2007_folder_uses_11_point(tmp_path: Path):
    dataset = FakeVocDataset(write_voc_folder(tmp_path / "VOC2007"))
    metrics = run_evaluation(dataset, predictions(drop_last=True), str(tmp_path / "out"))
    assert metrics["VOC_07_metric"] is True
    # cat: recall 1/2 at precision 1 -> 6 of 11 thresholds
    assert metrics["VOC_per_class"]["cat"] == pytest.approx(100 * 6 / 11)
    forced = run_evaluation(dataset, predictions(drop_last=True), str(tmp_path / "o2"),
                            voc_use_07_metric=False)
    assert forced["VOC_per_class"]["cat"] == pytest.approx(50.0)


def test_subset_of_images_and_repeated_ids(tmp_path: Path, caplog):
    dataset = FakeVocDataset(write_voc_folder(tmp_path / "VOC2012"))
    only_first = predictions()[:1]
    metrics = run_evaluation(dataset, only_first + only_first, str(tmp_path / "out"))
    assert "repeat an image id" in caplog.text
    # image 1 alone holds one cat and one dog, both found
    assert metrics["AP"] == pytest.approx(100.0) and metrics["VOC_mAP"] == pytest.approx(100.0)


def test_bad_predictions(tmp_path: Path):
    with pytest.raises(EvalError, match="no predictions"):
        run_evaluation(FakeCocoDataset(), [], str(tmp_path))
    target, output = predictions()[0]
    output = dict(output, labels=torch.tensor([0, 5]))
    with pytest.raises(EvalError, match="label 5 has no category id"):
        run_evaluation(FakeCocoDataset(), [(target, output)], str(tmp_path))


def test_format_table():
    metrics = {"AP": 41.234, "AP50": 60.0, "AP75": 44.5, "APs": -1.0, "APm": 38.0, "APl": 50.25}
    lines = format_table(metrics).splitlines()
    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip("|").split("|")]
    assert cells(lines[0]) == ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    assert cells(lines[2]) == ["41.23", "60.00", "44.50", "-", "38.00", "50.25"]
    assert len({len(line) for line in lines}) == 1
    with_voc = format_table(dict(metrics, VOC_mAP=77.777)).splitlines()
    assert cells(with_voc[0])[-1] == "VOC mAP" and cells(with_voc[2])[-1] == "77.78"
    per_class = format_per_class({"cat": 50.0, "dog": None}).splitlines()
    assert per_class[2].split() == ["|", "cat", "|", "50.00", "|"] and "-" in per_class[3]


def test_end_to_end_with_the_data_package(tmp_path: Path):
    """VOC folder -> fad.data test dataset (resized) -> ground truth as predictions -> 100 AP.

    Tiny 2x2-pixel objects make the coordinate conventions of reading and writing matter: a
    box written one pixel too wide would have devkit IoU 4/9 and be a false positive.
    """
    from fad.config import load_config
    from fad.data import build_dataset

    objects = {"a": [("cat", 5, 5, 6, 6, 0), ("dog", 20, 10, 60, 40, 0)],
               "b": [("cat", 30, 20, 31, 21, 0), ("dog", 1, 1, 10, 10, 1)]}
    root = write_voc(tmp_path / "VOC2012", objects, classes=["cat", "dog"], image_size=(48, 64),
                     image_suffix=".jpg")
    cfg = load_config(opts=["DATASETS.REGISTER", f"('tiny:voc:{root}:test',)",
                            "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "200"])
    dataset = build_dataset(cfg, ["tiny"], is_train=False)
    pairs = []
    for index in range(len(dataset)):
        _, target = dataset[index]
        assert tuple(target["size"].tolist()) == (96, 128)
        keep = ~target["difficult"]
        output = {"boxes": target["boxes"][keep], "labels": target["labels"][keep],
                  "scores": torch.ones(int(keep.sum()))}
        pairs.append((target, output))
    metrics = run_evaluation(dataset, pairs, str(tmp_path / "out"))
    assert metrics["AP"] == pytest.approx(100.0)
    assert metrics["VOC_mAP"] == pytest.approx(100.0)
    cat_file = tmp_path / "out" / "voc_results" / "comp4_det_test_cat.txt"
    lines = cat_file.read_text().splitlines()
    boxes = sorted([float(v) for v in line.split()[2:]] for line in lines)
    assert boxes == [pytest.approx([5, 5, 6, 6]), pytest.approx([30, 20, 31, 21])]
