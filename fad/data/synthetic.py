"""Synthetic detection data: coloured shapes on textured backgrounds, written as VOC and COCO.

Every image is a pure function of (seed, split, index), so a seed gives the same bytes on every
run. Boxes are tight integer pixel boxes [x0, y0, x1, y1) around the drawn shapes; the VOC xml
stores them 1-based inclusive (x0 + 1, y0 + 1, x1, y1), which the VOC reader maps back.
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fad.config.catalog import SYNTHETIC_COCO_DIR, SYNTHETIC_VOC_DIR

logger = logging.getLogger(__name__)

# One class per shape, each with its own base colour (RGB, jittered per object).
CLASSES = ("red_circle", "green_square", "blue_triangle", "yellow_star")
_COLOURS = ((215, 45, 40), (40, 165, 60), (45, 80, 215), (235, 200, 35))
# Defaults used when the synthetic_* catalog names are built and the data is missing.
DEFAULT_NUM_TRAIN, DEFAULT_NUM_VAL, DEFAULT_SEED = 300, 60, 0
DEFAULT_MIN_SIZE, DEFAULT_MAX_SIZE = 128, 256
_SPLIT_CODE = {"train": 0, "val": 1}
Box = tuple[int, int, int, int]  # [x0, y0, x1, y1) integer pixels


@dataclass
class Scene:
    image: Image.Image
    boxes: list[Box]
    labels: list[int]  # 0..len(CLASSES)-1


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Muted smooth colour noise, sometimes with stripes, plus grain; uint8 [H, W, 3]."""
    cells = rng.integers(2, 7, size=2)
    grey = rng.integers(80, 180, size=(cells[0], cells[1], 1))
    tint = rng.integers(-40, 41, size=(cells[0], cells[1], 3))
    coarse = Image.fromarray(np.clip(grey + tint, 0, 255).astype(np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.BICUBIC), dtype=np.float32)
    if rng.random() < 0.5:
        angle, period = rng.uniform(0, math.pi), rng.uniform(6, 30)
        yy, xx = np.mgrid[0:height, 0:width]
        stripes = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)
        smooth += 18 * stripes[..., None]
    smooth += rng.normal(0, 4, size=smooth.shape)
    return np.clip(smooth, 0, 255).astype(np.uint8)


def _polygon(label: int, box: Box, angle: float) -> list[tuple[float, float]]:
    """Triangle or star vertices inside `box`, rotated by `angle` about its centre."""
    x0, y0, x1, y1 = box
    cx, cy, rx, ry = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2, (x1 - 1 - x0) / 2, (y1 - 1 - y0) / 2
    if CLASSES[label] == "blue_triangle":
        radii, count = [1.0], 3
    else:
        radii, count = [1.0, 0.45], 10
    points = []
    for k in range(count):
        theta = angle + 2 * math.pi * k / count - math.pi / 2
        r = radii[k % len(radii)]
        points.append((cx + rx * r * math.cos(theta), cy + ry * r * math.sin(theta)))
    return points


def _overlaps_too_much(box: Box, others: list[Box]) -> bool:
    """True if `box` covers, or is covered by, more than 40% of the smaller of it and another."""
    for o in others:
        iw = min(box[2], o[2]) - max(box[0], o[0])
        ih = min(box[3], o[3]) - max(box[1], o[1])
        if iw > 0 and ih > 0:
            smaller = min((box[2] - box[0]) * (box[3] - box[1]), (o[2] - o[0]) * (o[3] - o[1]))
            if iw * ih > 0.4 * smaller:
                return True
    return False


def draw_scene(seed: int, split: str, index: int, min_size: int, max_size: int) -> Scene:
    """Image `index` of `split`: 0-6 shapes from ~8 px to ~60% of the short side, some overlap."""
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index])
    height, width = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
    image = Image.fromarray(_background(rng, height, width))
    draw = ImageDraw.Draw(image)
    num_objects = 0 if rng.random() < 0.05 else int(rng.integers(1, 7))
    boxes: list[Box] = []
    labels: list[int] = []
    for _ in range(num_objects * 10):
        if len(boxes) == num_objects:
            break
        label = int(rng.integers(len(CLASSES)))
        side = math.exp(rng.uniform(math.log(8), math.log(0.6 * min(height, width))))
        aspect = math.exp(rng.uniform(-0.3, 0.3))
        bw, bh = min(width, max(6, round(side * aspect))), min(height, max(6, round(side / aspect)))
        x0, y0 = int(rng.integers(0, width - bw + 1)), int(rng.integers(0, height - bh + 1))
        box = (x0, y0, x0 + bw, y0 + bh)
        jitter = rng.integers(-25, 26, 3)
        colour = tuple(int(c) for c in np.clip(np.array(_COLOURS[label]) + jitter, 0, 255))
        angle = rng.uniform(-0.4, 0.4)
        if _overlaps_too_much(box, boxes):
            continue
        if CLASSES[label] == "red_circle":
            draw.ellipse([x0, y0, box[2] - 1, box[3] - 1], fill=colour)
        elif CLASSES[label] == "green_square":
            draw.rectangle([x0, y0, box[2] - 1, box[3] - 1], fill=colour)
        else:
            points = [(round(x), round(y)) for x, y in _polygon(label, box, angle)]
            draw.polygon(points, fill=colour)
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            box = (max(0, min(xs)), max(0, min(ys)),
                   min(width, max(xs) + 1), min(height, max(ys) + 1))
        boxes.append(box)
        labels.append(label)
    return Scene(image, boxes, labels)


def _voc_xml(file_name: str, scene: Scene) -> str:
    objects = "".join(
        f"<object><name>{CLASSES[label]}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>0</difficult><bndbox><xmin>{b[0] + 1}</xmin><ymin>{b[1] + 1}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for b, label in zip(scene.boxes, scene.labels))
    return (f"<annotation><folder>{SYNTHETIC_VOC_DIR}</folder><filename>{file_name}</filename>"
            f"<size><width>{scene.image.width}</width><height>{scene.image.height}</height>"
            f"<depth>3</depth></size><segmented>0</segmented>{objects}</annotation>\n")


def _write_split(voc: Path, coco: Path, split: str, count: int, seed: int, min_size: int,
                 max_size: int) -> None:
    """Draw `count` images of `split` and write them to both layouts."""
    images, annotations, ids = [], [], []
    (coco / "images" / split).mkdir(parents=True)
    for index in range(count):
        scene = draw_scene(seed, split, index, min_size, max_size)
        file_id = f"{split}_{index:06d}"
        file_name = file_id + ".jpg"
        buffer = io.BytesIO()
        scene.image.save(buffer, format="JPEG", quality=95, subsampling=0)
        (voc / "JPEGImages" / file_name).write_bytes(buffer.getvalue())
        (coco / "images" / split / file_name).write_bytes(buffer.getvalue())
        (voc / "Annotations" / f"{file_id}.xml").write_text(_voc_xml(file_name, scene))
        ids.append(file_id)
        images.append({"id": index + 1, "file_name": file_name, "height": scene.image.height,
                       "width": scene.image.width})
        for box, label in zip(scene.boxes, scene.labels):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1,
                                "category_id": label + 1, "bbox": [box[0], box[1], w, h],
                                "area": w * h, "iscrowd": 0})
    (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(i + "\n" for i in ids))
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"}
                  for i, name in enumerate(CLASSES)]
    (coco / "annotations" / f"instances_{split}.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories}))


def generate(out: str | Path, num_train: int, num_val: int, seed: int,
             min_size: int = DEFAULT_MIN_SIZE, max_size: int = DEFAULT_MAX_SIZE,
             overwrite: bool = True) -> tuple[Path, Path]:
    """Write `out/synthetic_voc` and `out/synthetic_coco` (same images and boxes).

    Each folder appears atomically (written aside, then renamed); with `overwrite` False an
    existing folder is kept. Returns the two folders.
    """
    if not 16 <= min_size <= max_size:
        raise ValueError(f"need 16 <= min_size <= max_size, got {min_size}, {max_size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    targets = (out / SYNTHETIC_VOC_DIR, out / SYNTHETIC_COCO_DIR)
    with tempfile.TemporaryDirectory(dir=out, prefix=".synthetic_tmp_") as tmp:
        voc, coco = Path(tmp) / SYNTHETIC_VOC_DIR, Path(tmp) / SYNTHETIC_COCO_DIR
        for folder in (voc / "JPEGImages", voc / "Annotations", voc / "ImageSets" / "Main",
                       coco / "annotations"):
            folder.mkdir(parents=True)
        (voc / "classes.txt").write_text("".join(c + "\n" for c in CLASSES))
        for split, count in (("train", num_train), ("val", num_val)):
            _write_split(voc, coco, split, count, seed, min_size, max_size)
        for written, target in zip((voc, coco), targets):
            if target.exists() and overwrite:
                shutil.rmtree(target)
            try:
                os.rename(written, target)
            except OSError:
                if not target.is_dir():  # another process may have just put it there
                    raise
    return targets


def ensure_synthetic(root: str | Path) -> None:
    """Generate the default synthetic data under `root` if either layout is missing."""
    root = Path(root)
    if all((root / d).is_dir() for d in (SYNTHETIC_VOC_DIR, SYNTHETIC_COCO_DIR)):
        return
    logger.info("generating synthetic data (%d train / %d val images) under %s",
                DEFAULT_NUM_TRAIN, DEFAULT_NUM_VAL, root)
    generate(root, DEFAULT_NUM_TRAIN, DEFAULT_NUM_VAL, DEFAULT_SEED, overwrite=False)
