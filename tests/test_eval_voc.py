"""Devkit-exact VOC evaluation on hand-computed cases."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import load_tool, voc_fixture, write_voc
from PIL import Image

from fad.config import get_cfg_defaults
from fad.config.catalog import VOC_CLASSES
from fad.data import VOCDataset, build_transforms
from fad.data.voc_format import ClassList, read_voc_xml
from fad.errors import DataError
from fad.evaluation import EvalError, evaluate_voc, write_voc_results
from fad.evaluation.voc_ap import average_precision, inclusive_iou
from fad.evaluation.voc_io import read_classes

REPO = Path(__file__).resolve().parents[1]


def write_dets(dets_dir: Path, split: str, class_name: str, lines: list[tuple]) -> None:
    dets_dir.mkdir(exist_ok=True)
    text = "".join(" ".join(str(v) for v in line) + "\n" for line in lines)
    (dets_dir / f"comp4_det_{split}_{class_name}.txt").write_text(text)


# cat: G1 in im1, a difficult G2 in im1, G3 in im2 (2 positives); dog: only a difficult object.
IMAGES = {
    "im1": [("cat", 1, 1, 100, 100, 0), ("cat", 150, 150, 200, 200, 1), ("dog", 10, 10, 50, 50, 1)],
    "im2": [("cat", 10, 10, 60, 60, 0)],
    "im3": [],
}
CAT_DETS = [
    ("im2", 0.70, 300, 300, 340, 340),  # d5: overlaps nothing -> FP
    ("im1", 0.95, 1, 1, 100, 100),  # d1: G1 exactly -> TP
    ("im1", 0.90, 150, 150, 200, 200),  # d2: the difficult G2 -> ignored
    ("im1", 0.85, 2, 2, 100, 100),  # d3: G1 again -> duplicate FP
    # d4: G3 inside it; inclusive IoU 51*51/(51*102) = 0.5 exactly (TP), 50*50/(50*101) without +1
    ("im2", 0.80, 10, 10, 60, 111),
]


@pytest.fixture
def voc_case(tmp_path: Path) -> tuple[Path, Path]:
    root = write_voc(tmp_path / "VOC", IMAGES, classes=["cat", "dog"])
    dets = tmp_path / "dets"
    write_dets(dets, "test", "cat", CAT_DETS)
    write_dets(dets, "test", "dog", [("im1", 0.9, 10, 10, 50, 50), ("im3", 0.5, 1, 1, 9, 9)])
    return root, dets


def test_hand_computed_all_point_and_11_point(voc_case):
    root, dets = voc_case
    # ranked, difficult-matched d2 dropped: TP, FP, TP, FP with 2 positives
    recall = [0.5, 0.5, 1.0, 1.0]
    precision = [1.0, 0.5, 2 / 3, 0.5]
    # envelope: 1 up to recall 0.5, 2/3 up to recall 1
    all_point = 0.5 * 1.0 + 0.5 * (2 / 3)
    # thresholds 0..0.5 (6 of them) see precision 1, 0.6..1.0 (5) see max(2/3, 1/2)
    eleven_point = (6 * 1.0 + 5 * (2 / 3)) / 11
    assert average_precision(np.array(recall), np.array(precision)) == pytest.approx(all_point)
    out = evaluate_voc(str(root), "test", str(dets), ["cat", "dog"])
    assert out["per_class"]["cat"] == pytest.approx(100 * all_point)
    out07 = evaluate_voc(str(root), "test", str(dets), ["cat", "dog"], use_07_metric=True)
    assert out07["per_class"]["cat"] == pytest.approx(100 * eleven_point)
    assert abs(out07["per_class"]["cat"] - out["per_class"]["cat"]) > 1.0
    # dog has only a difficult object: reported as None, out of the mean
    assert out["per_class"]["dog"] is None and out["no_gt_classes"] == ["dog"]
    assert out["mAP"] == pytest.approx(100 * all_point)


def test_inclusive_iou_boundary_decides_match():
    gt = np.array([[10.0, 10.0, 60.0, 60.0]])
    box = np.array([10.0, 10.0, 60.0, 111.0])
    assert inclusive_iou(box, gt)[0] == 0.5
    continuous = (50 * 50) / (50 * 101)
    assert continuous < 0.5
    one_more_row = np.array([10.0, 10.0, 60.0, 112.0])
    assert inclusive_iou(one_more_row, gt)[0] == pytest.approx(51 / 103)


def test_boundary_detection_alone_is_a_true_positive(tmp_path: Path):
    root = write_voc(tmp_path / "VOC", {"a": [("cat", 10, 10, 60, 60, 0)]})
    dets = tmp_path / "dets"
    write_dets(dets, "test", "cat", [("a", 0.9, 10, 10, 60, 111)])
    assert evaluate_voc(str(root), "test", str(dets), ["cat"])["mAP"] == pytest.approx(100.0)
    write_dets(dets, "test", "cat", [("a", 0.9, 10, 10, 60, 112)])
    assert evaluate_voc(str(root), "test", str(dets), ["cat"])["mAP"] == pytest.approx(0.0)


def test_greedy_match_to_best_iou_then_duplicate_is_fp(tmp_path: Path):
    # A and B overlap; the second detection's best IoU is the already matched A -> FP,
    # although B is still free (the devkit does not fall back to the next-best object).
    objects = [("cat", 1, 1, 100, 100, 0), ("cat", 21, 1, 120, 100, 0)]
    root = write_voc(tmp_path / "VOC", {"a": objects})
    dets = tmp_path / "dets"
    write_dets(dets, "test", "cat", [("a", 0.9, 1, 1, 100, 100), ("a", 0.8, 6, 1, 105, 100)])
    iou_a = inclusive_iou(np.array([6.0, 1, 105, 100]),
                          np.array([[1.0, 1, 100, 100], [21, 1, 120, 100]]))
    assert iou_a[0] > iou_a[1] >= 0.5
    # TP then FP: recall [0.5, 0.5], precision [1, 0.5] -> AP 0.5
    assert evaluate_voc(str(root), "test", str(dets), ["cat"])["mAP"] == pytest.approx(50.0)


def test_ties_keep_file_order(tmp_path: Path):
    cat = ("cat", 1, 1, 10, 10, 0)
    root = write_voc(tmp_path / "VOC", {"a": [cat], "b": [cat]})
    dets = tmp_path / "dets"
    # FP first in the file at the same score: FP, TP, TP -> recall [0, 1/2, 1], precision
    # [0, 1/2, 2/3], envelope 2/3 everywhere -> AP 2/3 (file order TP, TP, FP would give 1)
    write_dets(dets, "test", "cat", [("a", 0.5, 50, 50, 60, 60), ("a", 0.5, 1, 1, 10, 10),
                                     ("b", 0.5, 1, 1, 10, 10)])
    assert evaluate_voc(str(root), "test", str(dets), ["cat"])["mAP"] == pytest.approx(100 * 2 / 3)


def test_exact_recall_threshold_counts_in_11_point():
    # recall hits 0.3 exactly (3 of 10): the 0.3 threshold must see precision 1
    recall = np.array([0.1, 0.2, 0.3, 0.3])
    precision = np.array([1.0, 1.0, 1.0, 0.75])
    assert average_precision(recall, precision, use_07_metric=True) == pytest.approx(4 / 11)


def test_image_subset(voc_case):
    root, dets = voc_case
    # im2 only: d4 (TP at 0.5 exactly) then d5 (FP) on G3 -> AP 1; im1's detections left out
    out = evaluate_voc(str(root), "test", str(dets), ["cat", "dog"], image_ids=["im2"])
    assert out["per_class"] == {"cat": pytest.approx(100.0), "dog": None}
    # im1 only: d1 TP, d2 ignored, d3 duplicate FP -> recall [1, 1], precision [1, 1/2] -> AP 1
    out = evaluate_voc(str(root), "test", str(dets), ["cat"], image_ids=["im1"])
    assert out["mAP"] == pytest.approx(100.0)


def test_no_detections_and_empty_files(tmp_path: Path):
    root = write_voc(tmp_path / "VOC", {"a": [("cat", 1, 1, 10, 10, 0)]})
    dets = tmp_path / "dets"
    write_dets(dets, "test", "cat", [])
    assert evaluate_voc(str(root), "test", str(dets), ["cat"])["mAP"] == 0.0


def test_write_voc_results_inverts_the_xml_reading(tmp_path: Path):
    root = write_voc(tmp_path / "VOC", {"a": [("cat", 11, 21, 60, 80, 0)], "b": []})
    dets = tmp_path / "dets"
    # the xml box 11 21 60 80 as the data package reads it: (xmin - 1, ymin - 1, xmax, ymax)
    paths = write_voc_results(str(dets), "test", ["cat", "dog"],
                              [("a", 0, 0.7, 10.0, 20.0, 60.0, 80.0)])
    assert [Path(p).name for p in paths] == ["comp4_det_test_cat.txt", "comp4_det_test_dog.txt"]
    fields = Path(paths[0]).read_text().split()
    assert fields[0] == "a" and float(fields[1]) == 0.7
    assert [float(v) for v in fields[2:]] == [11.0, 21.0, 60.0, 80.0]
    assert Path(paths[1]).read_text() == ""
    out = evaluate_voc(str(root), "test", str(dets), ["cat", "dog"])
    assert out["per_class"] == {"cat": pytest.approx(100.0), "dog": None}
    with pytest.raises(EvalError, match="label 2"):
        write_voc_results(str(dets), "test", ["cat", "dog"], [("a", 2, 0.5, 0, 0, 1, 1)])


def test_classes_resolution(tmp_path: Path):
    """The datasets' rule: classes.txt beside the data or beside its parent, else the sorted
    names in the annotations, else the 20 VOC classes; an explicit file wins; the source is told."""
    root = write_voc(tmp_path / "VOC", {"a": []}, classes=["x", "y"])
    assert read_classes(str(root)).names == ["x", "y"]
    assert read_classes(str(root)).source == str(root / "classes.txt")
    other = tmp_path / "mine.txt"
    other.write_text("z\n")
    assert read_classes(str(root), str(other)) == ClassList(["z"], str(other))
    bare = write_voc(tmp_path / "bare", {"a": []})
    assert read_classes(str(bare)).names == list(VOC_CLASSES)
    assert "20 VOC classes" in read_classes(str(bare)).source
    named = write_voc(tmp_path / "named", {"a": [("zebra", 1, 1, 5, 5, 0)],
                                           "b": [("ant", 1, 1, 5, 5, 1)]})
    assert read_classes(str(named)) == ClassList(["ant", "zebra"],
                                                 f"the object names in {named / 'Annotations'}")
    (tmp_path / "kit").mkdir()
    (tmp_path / "kit" / "classes.txt").write_text("b\na\n")
    nested = write_voc(tmp_path / "kit" / "VOC2012", {"a": [("a", 1, 1, 5, 5, 0)]})
    assert read_classes(str(nested)).names == ["b", "a"]
    (nested / "JPEGImages").mkdir()
    Image.new("RGB", (8, 8)).save(nested / "JPEGImages" / "a.jpg")
    dataset = VOCDataset(nested, "test", build_transforms(get_cfg_defaults(), False), False)
    assert dataset.classes == ["b", "a"]  # the datasets follow the same rule


def test_cli_tells_which_classes(voc_case, tmp_path: Path, capsys):
    root, dets = voc_case
    tool = load_tool("eval_detections")
    (root / "classes.txt").unlink(missing_ok=True)
    tool.main(_voc_cli_args(root, dets, tmp_path / "m.json"))
    assert f"classes: 2 from the object names in {root / 'Annotations'}" in capsys.readouterr().err


@pytest.mark.parametrize("bad_line, match", [
    ("im9 0.5 1 1 2 2", "not in the split"),
    ("im1 0.5 1 1 2", "expected 'image_id score"),
    ("im1 high 1 1 2 2", "expected 'image_id score"),
])
def test_bad_result_lines(voc_case, bad_line, match):
    root, dets = voc_case
    (dets / "comp4_det_test_cat.txt").write_text(bad_line + "\n")
    with pytest.raises(EvalError, match=match) as info:
        evaluate_voc(str(root), "test", str(dets), ["cat", "dog"])
    assert "comp4_det_test_cat.txt:1" in str(info.value)


def test_bad_inputs(voc_case, tmp_path: Path):
    root, dets = voc_case
    with pytest.raises(EvalError, match="no non-difficult object"):
        evaluate_voc(str(root), "test", str(dets), ["dog"], image_ids=["im1", "im3"])
    with pytest.raises(EvalError, match="not in .*test.txt"):
        evaluate_voc(str(root), "test", str(dets), ["cat"], image_ids=["im7"])
    with pytest.raises(DataError, match="split file not found"):
        evaluate_voc(str(root), "val", str(dets), ["cat"])
    (root / "Annotations" / "im3.xml").write_text("<annotation><object>")
    with pytest.raises(DataError, match="im3.xml: malformed XML"):
        evaluate_voc(str(root), "test", str(dets), ["cat"])
    (root / "Annotations" / "im3.xml").unlink()
    with pytest.raises(DataError, match="im3.xml: annotation file not found"):
        evaluate_voc(str(root), "test", str(dets), ["cat"])
    (dets / "comp4_det_test_dog.txt").unlink()
    with pytest.raises(EvalError, match="comp4_det_test_dog.txt: result file not found"):
        evaluate_voc(str(root), "test", str(dets), ["cat", "dog"], image_ids=["im1", "im2"])


def _voc_cli_args(root: Path, dets: Path, out: Path, split: str = "test") -> list[str]:
    return ["voc", "--voc-root", str(root), "--split", split, "--dets", str(dets),
            "--out", str(out), "--use-07-metric"]


def test_cli_voc(voc_case, tmp_path: Path, capsys):
    root, dets = voc_case
    out = tmp_path / "m.json"
    tool = load_tool("eval_detections")
    tool.main(_voc_cli_args(root, dets, out))
    metrics = json.loads(out.read_text())
    assert metrics["mAP"] == pytest.approx(100 * (6 + 5 * 2 / 3) / 11)
    assert metrics["per_class"]["dog"] is None and metrics["no_gt_classes"] == ["dog"]
    printed = capsys.readouterr().out
    assert "mAP (11-point (VOC2007))" in printed and "dog" in printed
    with pytest.raises(DataError, match="split file not found") as info:
        tool.main(_voc_cli_args(root, dets, out, split="nope"))
    assert len(str(info.value).splitlines()) == 1  # run_tool prints it as one line, exit 2


@pytest.mark.slow
def test_cli_runs_as_a_script(voc_case, tmp_path: Path):
    root, dets = voc_case
    out = tmp_path / "m.json"
    cmd = [sys.executable, str(REPO / "tools" / "eval_detections.py"),
           *_voc_cli_args(root, dets, out)]
    env = {"PYTHONPATH": str(REPO), "PATH": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["mAP"] == pytest.approx(100 * (6 + 5 * 2 / 3) / 11)
    cmd[cmd.index("--split") + 1] = "nope"
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    assert proc.returncode == 2
    # the info line on the classes comes first; the error is one line, no traceback
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "split file not found" in last
    assert "Traceback" not in proc.stderr


def test_real_voc_fixture_ground_truth_as_detections(tmp_path: Path):
    real_voc = voc_fixture("VOC2012")
    ids = (real_voc / "ImageSets" / "Main" / "trainval.txt").read_text().split()
    objects = {i: read_voc_xml(real_voc / "Annotations" / f"{i}.xml").objects for i in ids}
    # the fixture's classes are not the VOC 20: read them from the annotations, add one unseen
    classes = sorted({o.name for objs in objects.values() for o in objs}) + ["unseen"]
    records = [(i, classes.index(o.name), 1.0, o.box[0] - 1, o.box[1] - 1, o.box[2], o.box[3])
               for i, objs in objects.items() for o in objs]
    write_voc_results(str(tmp_path), "trainval", classes, records)
    out = evaluate_voc(str(real_voc), "trainval", str(tmp_path), classes)
    assert out["mAP"] == pytest.approx(100.0)
    assert out["no_gt_classes"] == ["unseen"]
    # dropping every other detection of the most frequent class halves its recall
    counts = {c: sum(o.name == c for objs in objects.values() for o in objs) for c in classes}
    top = max(counts, key=counts.get)
    kept = [r for r in records if r[1] != classes.index(top)]
    kept += [r for r in records if r[1] == classes.index(top)][::2]
    write_voc_results(str(tmp_path), "trainval", classes, kept)
    out = evaluate_voc(str(real_voc), "trainval", str(tmp_path), classes)
    found = (counts[top] + 1) // 2
    assert out["per_class"][top] == pytest.approx(100.0 * found / counts[top])


def _devkit_reference_ap(dets, gts, npos, use_07):
    """Literal per-detection loop of the devkit: ignored detections stay in the curve as
    rows with neither flag (0/0 precision -> NaN, skipped by max like MATLAB's max)."""
    order = sorted(range(len(dets)), key=lambda d: -dets[d][1])
    used = {k: [False] * len(v) for k, v in gts.items()}
    tp, fp = [], []
    for d in order:
        image_id, _, *box = dets[d]
        ovmax, jmax = -np.inf, -1
        for j, (g, _) in enumerate(gts.get(image_id, [])):
            iw = min(box[2], g[2]) - max(box[0], g[0]) + 1
            ih = min(box[3], g[3]) - max(box[1], g[1]) + 1
            if iw > 0 and ih > 0:
                ov = iw * ih / ((box[2] - box[0] + 1) * (box[3] - box[1] + 1)
                                + (g[2] - g[0] + 1) * (g[3] - g[1] + 1) - iw * ih)
                if ov > ovmax:
                    ovmax, jmax = ov, j
        t = f = 0
        if ovmax >= 0.5:
            if not gts[image_id][jmax][1]:
                if used[image_id][jmax]:
                    f = 1
                else:
                    t, used[image_id][jmax] = 1, True
        else:
            f = 1
        tp.append(t)
        fp.append(f)
    tp, fp = np.cumsum(tp, dtype=float), np.cumsum(fp, dtype=float)
    rec = tp / npos
    with np.errstate(invalid="ignore"):
        prec = tp / (tp + fp)
    if use_07:
        ap = 0.0
        for k in range(11):
            sel = prec[rec >= k / 10]
            sel = sel[~np.isnan(sel)]
            ap += (sel.max() if sel.size else 0.0) / 11
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = np.nanmax([mpre[i], mpre[i + 1]])
    idx = [i for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1]]
    return float(sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in idx))


@pytest.mark.parametrize("seed", range(6))
def test_matches_literal_devkit_loop_on_random_cases(tmp_path: Path, seed: int):
    rng = np.random.default_rng(seed)
    images, gts = {}, {}
    for i in range(6):
        objs = []
        for _ in range(int(rng.integers(0, 4))):
            x1, y1 = (int(v) for v in rng.integers(1, 60, size=2))
            w, h = (int(v) for v in rng.integers(5, 40, size=2))
            objs.append(("cat", x1, y1, x1 + w, y1 + h, bool(rng.random() < 0.25)))
        images[f"i{i}"] = objs
        gts[f"i{i}"] = [((o[1], o[2], o[3], o[4]), o[5]) for o in objs]
    npos = sum(not d for v in gts.values() for _, d in v)
    if npos == 0:
        images["i0"].append(("cat", 1, 1, 30, 30, False))
        gts["i0"].append(((1, 1, 30, 30), False))
        npos = 1
    dets = []
    for _ in range(25):
        image_id = f"i{int(rng.integers(0, 6))}"
        if gts[image_id] and rng.random() < 0.7:  # jitter a ground-truth box
            g = gts[image_id][int(rng.integers(0, len(gts[image_id])))][0]
            box = [float(v + rng.integers(-6, 7)) for v in g]
        else:
            x1, y1 = (float(v) for v in rng.integers(1, 60, size=2))
            box = [x1, y1, x1 + 20.0, y1 + 20.0]
        dets.append((image_id, float(rng.choice([0.3, 0.5, 0.9]) if rng.random() < 0.3
                                     else rng.random()), *box))
    root = write_voc(tmp_path / "VOC", images)
    write_dets(tmp_path / "dets", "test", "cat", dets)
    for use_07 in (False, True):
        out = evaluate_voc(str(root), "test", str(tmp_path / "dets"), ["cat"], use_07)
        assert out["mAP"] == pytest.approx(100 * _devkit_reference_ap(dets, gts, npos, use_07))
