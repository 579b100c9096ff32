"""The image check before the first step (fad.data.check, fad-check-data), the checkpoint on a
file that fails mid-run, fad-demo going on past a corrupt image, and the one classes.txt rule."""
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, tiny_fcos_cfg, write_voc
from PIL import Image

import fad.data.check as check
from fad.config import load_config
from fad.data import COCODataset, VOCDataset, build_dataset, make_train_loader
from fad.data.check import check_dataset_images, resolve_workers
from fad.engine.demo import run_demo
from fad.engine.trainer import DetectorStep, HookBase, Trainer
from fad.errors import ConfigError, DataError
from fad.modeling import build_detector

CONFIG = os.path.join(REPO, "configs", "fcos", "fcos_tiny_synthetic.yaml")
TINY = ["MODEL.DEVICE", "cpu", "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.FCOS.NUM_CONVS", "1",
        "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96", "INPUT.MIN_SIZE_TRAIN", "(64,)",
        "INPUT.MAX_SIZE_TRAIN", "96", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2"]
IDENTITY = lambda image, boxes, labels, generator: (image.float() / 255, boxes, labels)  # noqa: E731


def _jpeg(path: Path, height: int, width: int, seed: int = 0) -> None:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=90)


def _truncate(path: Path) -> None:
    """Keep the first half of the file: the header still reads, the pixels do not."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def write_coco(root: Path, annotated: dict[str, tuple[int, int]]) -> Path:
    """A COCO set at root/images + root/ann.json: one 1-box image per entry of `annotated`
    (file name -> the (height, width) the json gives); each image is written at that size."""
    images, anns = [], []
    for k, (name, (h, w)) in enumerate(annotated.items(), 1):
        _jpeg(root / "images" / name, h, w, seed=k)
        images.append({"id": k, "file_name": name, "height": h, "width": w})
        anns.append({"id": k, "image_id": k, "category_id": 1, "bbox": [2, 2, 10, 10],
                     "area": 100, "iscrowd": 0})
    ann_file = root / "ann.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": anns,
                                    "categories": [{"id": 1, "name": "thing"}]}))
    return ann_file


def damage(images: Path) -> list[str]:
    """Spoil b (truncated), c (not an image), d (missing), e (not its annotated size); returns
    the expected problem of each, in dataset order."""
    _truncate(images / "b.jpg")
    (images / "c.jpg").write_bytes(b"not an image")
    (images / "d.jpg").unlink()
    _jpeg(images / "e.jpg", 20, 30)
    return [f"{images / 'b.jpg'}: image file is corrupt or unreadable",
            f"{images / 'c.jpg'}: image file is corrupt or unreadable",
            f"{images / 'd.jpg'}: image file is missing",
            f"{images / 'e.jpg'}: image is 20x30 (h x w) but its annotation says 24x32"]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("FAD_CACHE_DIR", str(folder))
    return folder / "image_check"


@pytest.fixture
def five(tmp_path) -> Path:
    """A COCO set of five good 24x32 images a..e; returns its annotation file."""
    return write_coco(tmp_path / "five", {f"{c}.jpg": (24, 32) for c in "abcde"})


def _problems(ann_file: Path, workers: int) -> list[str]:
    dataset = COCODataset(ann_file.parent / "images", ann_file, IDENTITY, is_train=False)
    return check_dataset_images(dataset, workers).problems


@pytest.mark.parametrize("workers", [1, 2])
def test_each_bad_image_gets_one_line_with_its_reason_and_fix(five, cache, monkeypatch, workers):
    monkeypatch.setattr(check, "POOL_MIN_IMAGES", 1)  # 2 workers: the process pool decodes
    expected = damage(five.parent / "images")
    problems = _problems(five, workers)
    assert len(problems) == 4
    for line, start in zip(problems, expected):
        assert line.startswith(start) and "\n" not in line, line
    assert all(line.endswith(("replace the file", "remove its id/annotation",
                              "fix the annotation")) for line in problems)


def test_good_images_are_cached_by_size_and_mtime(five, cache):
    dataset = COCODataset(five.parent / "images", five, IDENTITY, is_train=False)
    first = check_dataset_images(dataset)
    assert (first.total, first.decoded, first.cached, first.problems) == (5, 5, 0, [])
    assert len(list(cache.glob("*.json"))) == 1  # one file for the one image folder
    again = check_dataset_images(dataset)
    assert (again.decoded, again.cached, again.problems) == (0, 5, [])
    _truncate(five.parent / "images" / "c.jpg")  # a new size and mtime: decoded again
    changed = check_dataset_images(dataset)
    assert (changed.decoded, changed.cached, len(changed.problems)) == (1, 4, 1)
    assert "c.jpg: image file is corrupt" in changed.problems[0]
    bad_again = check_dataset_images(dataset)  # bad files are never cached
    assert (bad_again.decoded, bad_again.cached) == (1, 4)


def test_long_check_logs_progress(five, cache, monkeypatch, caplog):
    monkeypatch.setattr(check, "PROGRESS_EVERY_S", 0.0)
    dataset = COCODataset(five.parent / "images", five, IDENTITY, is_train=False)
    with caplog.at_level(logging.INFO, logger="fad"):
        check_dataset_images(dataset, workers=1)
    lines = [m for m in caplog.messages if "decoded, ETA" in m]
    assert [m.split(",")[0] for m in lines] == [f"image check: {k}/5 decoded" for k in range(1, 6)]
    assert lines[-1].endswith("ETA 0 s")  # nothing left


def test_damaged_cache_file_counts_as_empty(five, cache):
    dataset = COCODataset(five.parent / "images", five, IDENTITY, is_train=False)
    check_dataset_images(dataset)
    (cache_file,) = cache.glob("*.json")
    cache_file.write_text("{not json")
    report = check_dataset_images(dataset)
    assert (report.decoded, report.problems) == (5, [])
    assert json.loads(cache_file.read_text())["version"] == check.CACHE_VERSION


def test_worker_count(monkeypatch):
    assert resolve_workers(3, 100) == 3 and resolve_workers(8, 2) == 2
    assert resolve_workers(5, 0) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert resolve_workers(0, 100) == 3
    with pytest.raises(ValueError, match="workers must be >= 0, got -1"):
        resolve_workers(-1, 10)
    with pytest.raises(ConfigError, match="DATASETS.CHECK_WORKERS"):
        load_config(CONFIG, ["DATASETS.CHECK_WORKERS", "-1"])


def test_build_dataset_checks_unless_switched_off(five, cache, tmp_path):
    damage(five.parent / "images")
    cfg = tiny_fcos_cfg(str(tmp_path), str(tmp_path / "out"))
    cfg.merge_from_list(["DATASETS.REGISTER", (f"five:coco:{five.parent / 'images'},{five}",)])
    with pytest.raises(DataError, match=r"^five: 4 of 5 images are missing, corrupt or not the "):
        build_dataset(cfg, ["five"], is_train=True)
    cfg.merge_from_list(["DATASETS.CHECK_IMAGES", False])
    assert len(build_dataset(cfg, ["five"], is_train=True)) == 5


class _SpoilAfter(HookBase):
    """Overwrites every image of `folder` with junk once `iteration` iterations are done."""

    def __init__(self, folder: Path, iteration: int):
        self.folder, self.iteration = folder, iteration

    def after_step(self, trainer: Trainer) -> None:
        if trainer.iter == self.iteration:
            for path in self.folder.glob("*.jpg"):
                path.write_bytes(b"junk")


def test_file_failing_mid_run_writes_a_checkpoint_then_resume_finishes(synthetic_root, tmp_path,
                                                                       cache):
    root = tmp_path / "data"
    shutil.copytree(Path(synthetic_root) / "synthetic_coco", root / "synthetic_coco")
    images = root / "synthetic_coco" / "images" / "train"
    originals = {p: p.read_bytes() for p in images.glob("*.jpg")}
    cfg = tiny_fcos_cfg(str(root), str(tmp_path / "out"))
    cfg.merge_from_list(["DATALOADER.NUM_WORKERS", 0, "SOLVER.MAX_ITER", 4])
    dataset = build_dataset(cfg, cfg.DATASETS.TRAIN, is_train=True)  # passes the check

    def trainer(hooks):
        torch.manual_seed(0)
        model = build_detector(cfg, dataset.num_classes)
        return Trainer(cfg, DetectorStep(cfg, model, torch.device("cpu")),
                       lambda start: make_train_loader(cfg, dataset, start), hooks=hooks)

    first = trainer([_SpoilAfter(images, 2)])
    first.resume_or_load(resume=False)
    with pytest.raises(DataError, match="image file is corrupt"):
        first.train()
    out = tmp_path / "out"
    assert (out / "last_checkpoint").read_text().strip().endswith("model_0000002.pth")
    assert torch.load(out / "model_0000002.pth", weights_only=False)["iteration"] == 2
    for path, data in originals.items():  # the user replaces the files
        path.write_bytes(data)
    second = trainer([])
    second.resume_or_load(resume=True)
    assert second.iter == 2
    second.train()
    assert torch.load(out / "model_final.pth", weights_only=False)["iteration"] == 4


def _tool(name: str, args: list[str], cache: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", FAD_CACHE_DIR=str(cache.parent))
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", f"{name}.py"), *args],
                          capture_output=True, text=True, timeout=600, env=env, cwd=cwd)


def _register(names: dict[str, str]) -> list[str]:
    return ["DATASETS.REGISTER", repr(tuple(f"{n}:{spec}" for n, spec in names.items()))]


@pytest.mark.slow
def test_check_data_lists_bad_files_and_exits_2(five, cache, tmp_path):
    expected = damage(five.parent / "images")
    good = write_coco(tmp_path / "good", {"g.jpg": (24, 32)})
    run = _tool("check_data", ["--config-file", CONFIG, *_register(
        {"five": f"coco:{five.parent / 'images'},{five}",
         "good": f"coco:{good.parent / 'images'},{good}"}),
        "DATASETS.TRAIN", "('five',)", "DATASETS.TEST", "('good',)"], cache, tmp_path)
    assert run.returncode == 2, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    for start in expected:
        assert sum(start in line for line in lines) == 1, (start, run.stdout)
    assert any("five: 5 images, 4 bad" in line for line in lines), run.stdout
    assert any("good: 1 images, all readable" in line for line in lines), run.stdout
    assert run.stderr.strip().splitlines() == [
        "error: 4 of 6 images are missing, corrupt or not the annotated size (one line each "
        "above); replace or fix them"]
    assert not list(tmp_path.glob("output*"))  # the check writes nothing besides its cache


@pytest.mark.slow
def test_train_checks_the_test_set_before_the_first_step(five, cache, tmp_path):
    damage(five.parent / "images")
    good = write_coco(tmp_path / "good", {f"g{i}.jpg": (24, 32) for i in range(4)})
    out = tmp_path / "out"
    run = _tool("train_net", ["--config-file", CONFIG, *TINY, "OUTPUT_DIR", str(out), *_register(
        {"five": f"coco:{five.parent / 'images'},{five}",
         "good": f"coco:{good.parent / 'images'},{good}"}),
        "DATASETS.TRAIN", "('good',)", "DATASETS.TEST", "('five',)"], cache, tmp_path)
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("error: five: 4 of 5 images are missing")
    assert "start train" not in run.stdout and not list(out.glob("model_*.pth"))


@pytest.mark.slow
def test_demo_goes_on_past_a_corrupt_image(tmp_path, cache):
    cfg = tiny_fcos_cfg(str(tmp_path), str(tmp_path))
    cfg.merge_from_list(TINY)
    weights = tmp_path / "model.pth"
    torch.manual_seed(0)
    torch.save({"model": build_detector(cfg, 2).state_dict(), "classes": ["a", "b"]}, weights)
    photos = tmp_path / "photos"
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        _jpeg(photos / name, 40, 60)
    _truncate(photos / "b.jpg")
    out = tmp_path / "out"
    run = _tool("demo", ["--config-file", CONFIG, "MODEL.WEIGHT", str(weights), *TINY,
                         "--input", str(photos), "--output", str(out)], cache, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    warnings = [line for line in (run.stdout + run.stderr).splitlines() if "b.jpg" in line]
    assert len(warnings) == 1 and "skipped:" in warnings[0] and "corrupt" in warnings[0], warnings
    records = json.loads((out / "detections.json").read_text())
    assert [Path(r["file"]).name for r in records] == ["a.jpg", "c.jpg"]
    assert sorted(p.name for p in out.glob("*.jpg")) == ["a.jpg", "c.jpg"]


def test_demo_with_no_readable_image_is_an_error(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"junk")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"^none of the 1 input images could be read"):
        run_demo(torch.nn.Identity(), ["a"], IDENTITY, [bad], str(out), 0.3, torch.device("cpu"))
    assert not (out / "detections.json").exists()


@pytest.mark.slow
def test_classes_txt_beside_the_data_wins_over_the_parents(tmp_path, cache):
    """The one rule (docs/data.md): ROOT/classes.txt, else ROOT/../classes.txt, else the sorted
    object names of the annotations; fad-check-data logs which one each set uses."""
    objects = {"x1": [("cat", 1, 1, 8, 8, 0), ("dog", 2, 2, 9, 9, 0)]}
    kit = tmp_path / "kit"
    write_voc(kit / "A", objects, split="train", image_size=(16, 16))
    write_voc(kit / "B", objects, split="train", classes=["cat", "dog", "cow"],
              image_size=(16, 16))
    write_voc(tmp_path / "C", objects, split="train", image_size=(16, 16))
    (kit / "classes.txt").write_text("dog\ncat\n")
    assert VOCDataset(kit / "A", "train", IDENTITY, True).classes == ["dog", "cat"]
    assert VOCDataset(kit / "B", "train", IDENTITY, True).classes == ["cat", "dog", "cow"]
    run = _tool("check_data", ["--config-file", CONFIG, *_register(
        {"a": f"voc:{kit / 'A'}:train", "b": f"voc:{kit / 'B'}:train",
         "c": f"voc:{tmp_path / 'C'}:train"}),
        "DATASETS.TRAIN", "('a', 'b')", "DATASETS.TEST", "('c',)"], cache, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{kit / 'A'}: 2 classes from {kit / 'classes.txt'}" in run.stdout
    assert f"{kit / 'B'}: 3 classes from {kit / 'B' / 'classes.txt'}" in run.stdout
    assert f"{tmp_path / 'C'}: 2 classes from the object names in" in run.stdout
    assert "all 3 images of a, b, c are good" in run.stdout
