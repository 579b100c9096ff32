"""Detections on a user's images: predict, draw boxes with class names and scores, write JSON.

    images = list_images("photos/")                        # one file or a folder of images
    detections = run_demo(model, classes, build_transforms(cfg, is_train=False), images,
                          "out/", score_threshold=0.3, device=device, batch_size=8,
                          size_divisibility=cfg.INPUT.SIZE_DIVISIBILITY)

Writes `out/<name>.jpg|png` (the image with its boxes drawn by torchvision's
`draw_bounding_boxes`) and `out/detections.json`:
`[{"file": "photos/a.jpg", "output": "out/a.jpg", "height": H, "width": W,
"detections": [{"label": "dog", "label_id": 11, "score": 0.93, "box": [x1, y1, x2, y2]}]}]`
with boxes in pixel coordinates of the original image.
"""
from __future__ import annotations

import colorsys
import functools
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor, nn
from torchvision.utils import draw_bounding_boxes

from fad.data.image import read_image
from fad.errors import DataError
from fad.evaluation.results import rescale_boxes, write_json
from fad.modeling.image_batch import padded_canvas

logger = logging.getLogger("fad")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DETECTIONS_FILE = "detections.json"
Transforms = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]


def list_images(path: str) -> list[Path]:
    """`path` itself when it is a file, else the images directly inside the folder (sorted)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise DataError(f"{path}: no such image or folder; give --input an image file or a "
                        "folder of images")
    images = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder; "
                        "give --input a folder of images or one image file")
    return images


def predict(model: nn.Module, images: Sequence[Tensor], transforms: Transforms,
            device: torch.device) -> list[dict[str, Tensor]]:
    """Detections of `model` (in eval mode) on uint8 images [3, H, W], in one forward.

    Give it images whose resized sizes pad to one canvas (`predict_by_size` groups them so):
    each then gets the canvas it would get alone, so its detections do not depend on the others
    (up to float summation order). Returns per image `boxes` float [K, 4] xyxy in the image's
    own pixel frame, `scores` [K] and `labels` [K] (0-based class indices), on the CPU, best
    score first.
    """
    return _detect(model, images, [_resized(transforms, image) for image in images], device)


def predict_by_size(model: nn.Module, images: Sequence[Tensor], transforms: Transforms,
                    device: torch.device, size_divisibility: int = 1) -> list[dict[str, Tensor]]:
    """`predict` on every group of `images` whose resized sizes, padded up to a multiple of
    `size_divisibility` (the detector's INPUT.SIZE_DIVISIBILITY), are equal: the canvas each
    image gets alone, so grouping changes no detection. Results in input order."""
    resized = [_resized(transforms, image) for image in images]
    groups: dict[tuple[int, int], list[int]] = {}
    for i, r in enumerate(resized):
        groups.setdefault(padded_canvas(r.shape[-2:], size_divisibility), []).append(i)
    results: list[dict[str, Tensor]] = [{} for _ in images]
    for indices in groups.values():
        found = _detect(model, [images[i] for i in indices], [resized[i] for i in indices], device)
        for i, dets in zip(indices, found):
            results[i] = dets
    return results


def _resized(transforms: Transforms, image: Tensor) -> Tensor:
    """`image` as the test transforms give it to the detector (float [3, h, w])."""
    return transforms(image, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))[0]


@torch.no_grad()
def _detect(model: nn.Module, images: Sequence[Tensor], resized: Sequence[Tensor],
            device: torch.device) -> list[dict[str, Tensor]]:
    """`predict`'s result for `images`, given each as the transforms resized it (`resized`)."""
    outputs = model([r.to(device) for r in resized])
    results = []
    for image, r, output in zip(images, resized, outputs):
        boxes = rescale_boxes(output["boxes"], r.shape[-2:], image.shape[-2:]).float()
        scores = output["scores"].detach().cpu().float()
        order = scores.argsort(descending=True)
        results.append({"boxes": boxes[order], "scores": scores[order],
                        "labels": output["labels"].detach().cpu()[order]})
    return results


def class_color(index: int) -> tuple[int, int, int]:
    """A saturated RGB colour per class index, far apart for neighbouring indices."""
    hue = (index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image: Tensor, detections: dict[str, Tensor],
                    classes: Sequence[str]) -> Tensor:
    """`image` (uint8 [3, H, W]) with every detection's box and `name score` label drawn."""
    if len(detections["boxes"]) == 0:
        return image
    labels = [int(i) for i in detections["labels"]]
    names = [f"{class_name(classes, i)} {float(s):.2f}"
             for i, s in zip(labels, detections["scores"])]
    colors = [class_color(i) for i in labels]
    short = min(image.shape[-2:])
    return draw_bounding_boxes(image, detections["boxes"], labels=names, colors=colors,
                               width=max(2, round(short / 200)), font=label_font(),
                               font_size=max(12, round(short / 30)), label_colors="black",
                               fill_labels=True)


@functools.cache
def label_font() -> str:
    """Path of the TrueType font for labels: matplotlib's bundled DejaVu Sans."""
    from matplotlib import font_manager

    return font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans"))


def class_name(classes: Sequence[str], index: int) -> str:
    """The name of class `index`, or `class <index>` beyond the list."""
    return classes[index] if 0 <= index < len(classes) else f"class {index}"


def _write_image(image: Tensor, path: str) -> None:
    """Save a uint8 [3, H, W] image; the format follows the suffix (JPEG at quality 95)."""
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path, quality=95)


def _output_path(source: Path, output_dir: str, taken: set[str]) -> str:
    """`output_dir/<stem>.<png|jpg>`, with a numbered suffix when two inputs share a stem."""
    suffix = ".png" if source.suffix.lower() == ".png" else ".jpg"
    name, n = source.stem + suffix, 1
    while name in taken:
        name, n = f"{source.stem}_{n}{suffix}", n + 1
    taken.add(name)
    return os.path.join(output_dir, name)


def _read_readable(paths: Sequence[Path]) -> list[tuple[Path, Tensor]]:
    """(path, uint8 image [3, H, W]) of each file of `paths` that reads; a warning line for
    each that does not."""
    loaded = []
    for path in paths:
        try:
            loaded.append((path, read_image(path)))
        except DataError as exc:
            logger.warning("skipped: %s", exc)
    return loaded


def run_demo(model: nn.Module, classes: Sequence[str], transforms: Transforms,
             images: Sequence[Path], output_dir: str, score_threshold: float,
             device: torch.device, batch_size: int = 1,
             size_divisibility: int = 1) -> list[dict]:
    """Detect, draw and write every image of `images`; returns what detections.json holds.

    Images are read `batch_size` at a time and those among them that pad to one canvas
    (`size_divisibility`: the detector's INPUT.SIZE_DIVISIBILITY) detected in one forward
    (`predict_by_size`). Only detections scoring >= `score_threshold` are drawn and
    listed. An image that cannot be read gets one warning line and is left out; the others go on
    (a DataError when none is left).
    """
    if not 0.0 <= score_threshold <= 1.0:
        raise ValueError(f"score threshold must be in [0, 1], got {score_threshold}")
    os.makedirs(output_dir, exist_ok=True)
    model.eval()
    records, taken = [], set()
    for start in range(0, len(images), batch_size):
        loaded = _read_readable(images[start:start + batch_size])
        found = predict_by_size(model, [image for _, image in loaded], transforms, device,
                                size_divisibility)
        for (path, image), dets in zip(loaded, found):
            keep = dets["scores"] >= score_threshold
            dets = {k: v[keep] for k, v in dets.items()}
            out = _output_path(path, output_dir, taken)
            _write_image(draw_detections(image, dets, classes), out)
            records.append(_record(path, out, image, dets, classes))
            logger.info("%s: %d detections >= %.2f -> %s", path, int(keep.sum()),
                        score_threshold, out)
    if images and not records:
        raise DataError(f"none of the {len(images)} input images could be read (warnings above); "
                        "replace the files")
    write_json(os.path.join(output_dir, DETECTIONS_FILE), records)
    return records


def _record(path: Path, out: str, image: Tensor, dets: dict[str, Tensor],
            classes: Sequence[str]) -> dict:
    """One image's entry of detections.json."""
    return {
        "file": str(path), "output": out,
        "height": int(image.shape[1]), "width": int(image.shape[2]),
        "detections": [{"label": class_name(classes, int(i)), "label_id": int(i),
                        "score": round(float(s), 4), "box": [round(float(v), 1) for v in b]}
                       for b, s, i in zip(dets["boxes"], dets["scores"], dets["labels"])]}
