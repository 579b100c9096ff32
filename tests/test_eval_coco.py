"""COCO evaluation through pycocotools on hand-computed cases, and the `coco` CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_tool
from pycocotools.coco import COCO

from fad.evaluation import EvalError, evaluate_coco
from fad.evaluation.coco_eval import COCO_METRICS, run_cocoeval

# xywh boxes: one small (20x20), one medium (50x50), one large (120x120) object of category 7
GT_BOXES = {1: [[10, 10, 20, 20], [100, 100, 50, 50]], 2: [[20, 20, 120, 120]]}


def gt_dict(boxes: dict[int, list[list[float]]] = GT_BOXES) -> dict:
    anns, images = [], []
    for image_id, image_boxes in boxes.items():
        images.append({"id": image_id, "width": 200, "height": 200, "file_name": f"{image_id}.png"})
        for b in image_boxes:
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 7, "bbox": b,
                         "area": b[2] * b[3], "iscrowd": 0})
    return {"images": images, "annotations": anns,
            "categories": [{"id": 7, "name": "thing"}, {"id": 9, "name": "other"}]}


def make_coco(data: dict) -> COCO:
    coco = COCO()
    coco.dataset = data
    coco.createIndex()
    return coco


def det(image_id: int, bbox, score: float, category_id: int = 7) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": list(bbox), "score": score}


def test_perfect_detections_give_100():
    results = [det(i, b, 0.9) for i, bs in GT_BOXES.items() for b in bs]
    metrics = evaluate_coco(make_coco(gt_dict()), results)
    assert set(metrics) == set(COCO_METRICS)
    for k in COCO_METRICS:
        # AR1 keeps one detection per image: image 1 has two objects -> recall 2/3
        assert metrics[k] == pytest.approx(100 * 2 / 3 if k == "AR1" else 100.0), k


def test_one_of_two_found_with_a_false_positive_in_between(capsys):
    gt = make_coco(gt_dict({1: [[0, 0, 50, 50], [100, 100, 50, 50]]}))
    results = [
        det(1, [0, 0, 50, 50], 0.9),  # TP at every IoU threshold
        det(1, [150, 0, 40, 40], 0.8),  # overlaps nothing: FP
        det(1, [100, 100, 50, 31], 0.7),  # IoU 0.62 with the second box: TP at 0.50, 0.55, 0.60
    ]
    capsys.readouterr()
    metrics = evaluate_coco(gt, results)
    assert capsys.readouterr().out == ""
    # 101 recall points. At IoU 0.5: TP FP TP -> precision envelope 1 up to recall 0.5 (51 points),
    # 2/3 for recall 0.51..1 (50 points). Thresholds 0.65..0.95: only recall 0.5 reached.
    ap50 = (51 + 50 * 2 / 3) / 101
    half = 51 / 101
    assert metrics["AP50"] == pytest.approx(100 * ap50)
    assert metrics["AP75"] == pytest.approx(100 * half)
    assert metrics["AP"] == pytest.approx(100 * (3 * ap50 + 7 * half) / 10)
    assert metrics["APm"] == pytest.approx(metrics["AP"])
    assert metrics["APs"] == -1.0 and metrics["APl"] == -1.0  # no small/large ground truth
    assert metrics["AR1"] == pytest.approx(50.0)  # best detection only: recall 1/2 everywhere
    assert metrics["AR10"] == pytest.approx(100 * (3 * 1.0 + 7 * 0.5) / 10)
    assert metrics["AR100"] == metrics["AR10"]


def test_ap50_against_a_hand_count_over_images():
    # 3 ground-truth boxes; detections by score: TP(img1), FP, TP(img2 box at IoU 0.6), FP.
    # Precision at recall 1/3 = 1, at 2/3 = 2/3; recall 1 never reached.
    gt = make_coco(gt_dict({1: [[0, 0, 40, 40]], 2: [[50, 50, 60, 60], [0, 0, 30, 30]]}))
    results = [det(1, [0, 0, 40, 40], 0.95), det(1, [100, 100, 30, 30], 0.9),
               det(2, [50, 50, 60, 36], 0.8), det(2, [150, 150, 20, 20], 0.7)]
    metrics = evaluate_coco(gt, results)
    # recall thresholds 0..0.33 (34 points) -> 1; 0.34..0.66 (33 points) -> 2/3; rest 0
    assert metrics["AP50"] == pytest.approx(100 * (34 + 33 * 2 / 3) / 101)


def test_empty_results_give_zeros():
    metrics = evaluate_coco(make_coco(gt_dict()), [])
    assert metrics == {k: 0.0 for k in COCO_METRICS}


def test_image_subset_and_summary_text():
    gt = make_coco(gt_dict())
    results = [det(1, b, 0.9) for b in GT_BOXES[1]]
    # image 2's box is missed when all images count, not when only image 1 is evaluated
    assert evaluate_coco(gt, results)["AR100"] == pytest.approx(100 * 2 / 3)
    metrics, summary = run_cocoeval(gt, results, img_ids=[1])
    assert metrics["AR100"] == pytest.approx(100.0)
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all" in summary
    assert "Running per image" not in summary


def test_results_are_not_mutated():
    results = [det(1, GT_BOXES[1][0], 0.9)]
    before = json.dumps(results)
    evaluate_coco(make_coco(gt_dict()), results)
    assert json.dumps(results) == before


@pytest.mark.parametrize("bad, match", [
    (det(5, [0, 0, 5, 5], 0.5), "image_id 5 absent"),
    (det(1, [0, 0, 5, 5], 0.5, category_id=3), "category_id 3 absent"),
    ({"image_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}, "lacks \\['category_id'\\]"),
    (det(1, [0, 0, 5], 0.5), "give \\[x, y, width, height\\]"),
])
def test_bad_results(bad, match):
    with pytest.raises(EvalError, match=match):
        evaluate_coco(make_coco(gt_dict()), [bad])


def _cli(*args: str) -> dict:
    """Run tools/eval_detections.py's main in this process (importing torch again is slow)."""
    return load_tool("eval_detections").main(["coco", *args])


def test_cli_coco(tmp_path: Path, capsys):
    gt_file, dets_file, out = tmp_path / "gt.json", tmp_path / "dets.json", tmp_path / "m.json"
    gt_file.write_text(json.dumps(gt_dict()))
    dets_file.write_text(json.dumps([det(1, b, 0.9) for b in GT_BOXES[1]]))
    returned = _cli("--gt", str(gt_file), "--dets", str(dets_file), "--out", str(out))
    metrics = json.loads(out.read_text())
    assert metrics == returned and set(metrics) == set(COCO_METRICS)
    assert metrics["APl"] == 0.0 and metrics["APs"] == pytest.approx(100.0)
    printed = capsys.readouterr().out
    assert "AP50" in printed and "Average Precision" not in printed and "index" not in printed
    _cli("--gt", str(gt_file), "--dets", str(dets_file), "--out", str(out), "--verbose")
    assert "Average Precision" in capsys.readouterr().out  # pycocotools' block on request
    dets_file.write_text("[{")
    with pytest.raises(EvalError, match="dets.json: malformed JSON") as info:
        _cli("--gt", str(gt_file), "--dets", str(dets_file), "--out", str(out))
    assert len(str(info.value).splitlines()) == 1
    dets_file.write_text("[]")
    gt_file.write_text(json.dumps({"images": []}))
    with pytest.raises(EvalError, match="gt.json: not a COCO annotation file"):
        _cli("--gt", str(gt_file), "--dets", str(dets_file), "--out", str(out))
