"""Synthetic data: deterministic files, same data in both layouts, tight boxes, auto-generation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_tool

from fad.config import get_cfg_defaults
from fad.data import build_dataset, synthetic
from fad.data.synthetic import CLASSES, draw_scene, generate

make_synthetic_data = load_tool("make_synthetic_data")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_cli_is_deterministic_and_says_where_it_wrote(tmp_path, capsys):
    args = ["--num-train", "5", "--num-val", "2", "--min-size", "64", "--max-size", "96"]
    for run in ("a", "b"):
        make_synthetic_data.main(["--out", str(tmp_path / run), "--seed", "3"] + args)
        assert str(tmp_path / run / "synthetic_voc") in capsys.readouterr().out
    first, second = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert "synthetic_coco/annotations/instances_train.json" in first
    assert "synthetic_voc/ImageSets/Main/val.txt" in first and "synthetic_voc/classes.txt" in first
    assert len([k for k in first if k.startswith("synthetic_voc/Annotations/")]) == 7
    assert first == second
    make_synthetic_data.main(["--out", str(tmp_path / "c"), "--seed", "4"] + args)
    other = _files(tmp_path / "c")
    train_json = "synthetic_coco/annotations/instances_train.json"
    assert other[train_json] != first[train_json]


def test_voc_and_coco_layouts_hold_the_same_samples(tmp_path):
    generate(tmp_path, 6, 3, seed=1, min_size=64, max_size=96)
    cfg = get_cfg_defaults()
    cfg.DATASETS.ROOT = str(tmp_path)
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 96
    for split, count in (("train", 6), ("val", 3)):
        voc = build_dataset(cfg, [f"synthetic_voc_{split}"], is_train=False)
        coco = build_dataset(cfg, [f"synthetic_coco_{split}"], is_train=False)
        assert voc.classes == coco.classes == list(CLASSES) and len(voc) == len(coco) == count
        for i in range(count):
            (vi, vt), (ci, ct) = voc[i], coco[i]
            assert torch.equal(vi, ci) and torch.equal(vt["boxes"], ct["boxes"])
            assert torch.equal(vt["labels"], ct["labels"])
            scene = draw_scene(1, split, i, 64, 96)
            assert vt["orig_size"].tolist() == [scene.image.height, scene.image.width]
            assert vt["labels"].tolist() == scene.labels
            scale = (vt["size"] / vt["orig_size"]).flip(0).repeat(2)
            drawn = torch.tensor(scene.boxes, dtype=torch.float32).reshape(-1, 4)
            assert torch.allclose(vt["boxes"], drawn * scale)


def test_boxes_are_tight_around_the_drawn_shapes():
    checked = set()
    for index in range(40):
        scene = draw_scene(0, "train", index, 128, 256)
        pixels = np.asarray(scene.image).astype(int)
        h, w = pixels.shape[:2]
        for k, (box, label) in enumerate(zip(scene.boxes, scene.labels)):
            x0, y0, x1, y1 = box
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            others = [b for j, b in enumerate(scene.boxes) if j != k]
            if any(b[0] <= x1 and x0 <= b[2] and b[1] <= y1 and y0 <= b[3] for b in others):
                continue
            colour = pixels[(y0 + y1 - 1) // 2, (x0 + x1 - 1) // 2]
            ex0, ey0, ex1, ey1 = max(0, x0 - 2), max(0, y0 - 2), min(w, x1 + 2), min(h, y1 + 2)
            ys, xs = np.nonzero((pixels[ey0:ey1, ex0:ex1] == colour).all(axis=-1))
            extent = (xs.min() + ex0, ys.min() + ey0, xs.max() + ex0 + 1, ys.max() + ey0 + 1)
            assert extent == box, (index, k)
            checked.add(label)
    assert checked == set(range(len(CLASSES)))


def test_objects_span_small_to_large_and_some_images_are_empty():
    scenes = [draw_scene(0, "train", i, 128, 256) for i in range(60)]
    sides = [min(b[2] - b[0], b[3] - b[1]) for s in scenes for b in s.boxes]
    assert min(sides) <= 10 and max(sides) >= 80
    assert any(not s.boxes for s in scenes) and max(len(s.boxes) for s in scenes) >= 5


def test_catalog_names_generate_missing_data_under_root(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "DEFAULT_NUM_TRAIN", 4)
    monkeypatch.setattr(synthetic, "DEFAULT_NUM_VAL", 2)
    cfg = get_cfg_defaults()
    cfg.DATASETS.ROOT = str(tmp_path / "root")
    train = build_dataset(cfg, ["synthetic_coco_train"], is_train=True)
    assert len(train) == 4 and train.num_classes == len(CLASSES)
    assert (tmp_path / "root" / "synthetic_voc" / "ImageSets" / "Main" / "val.txt").is_file()
    assert not list((tmp_path / "root").glob(".synthetic_tmp_*"))
    reference = tmp_path / "ref"
    generate(reference, 4, 2, seed=synthetic.DEFAULT_SEED)
    assert _files(tmp_path / "root") == _files(reference)
    monkeypatch.setattr(synthetic, "generate", lambda *a, **k: pytest.fail("regenerated data"))
    assert len(build_dataset(cfg, ["synthetic_voc_val"], is_train=False)) == 2


def test_generate_rejects_bad_sizes(tmp_path):
    with pytest.raises(ValueError, match="min_size"):
        generate(tmp_path, 1, 1, 0, min_size=64, max_size=32)
