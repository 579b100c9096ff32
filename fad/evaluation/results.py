"""Turn a detector's (target, output) pairs into COCO/VOC result files and metrics."""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from fad.errors import EvalError
from fad.utils.io import atomic_write_text

from .coco_eval import evaluate_coco
from .voc_eval import evaluate_voc, write_voc_results

logger = logging.getLogger(__name__)


def write_json(path: str, obj, indent: int | None = 1) -> None:
    """Write `obj` as JSON to `path` atomically (temporary file + os.replace)."""
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def rescale_boxes(boxes: torch.Tensor, size, orig_size) -> torch.Tensor:
    """Boxes [K, 4] xyxy from the (h, w) = `size` frame to the (h, w) = `orig_size` frame."""
    h, w = (float(v) for v in size)
    orig_h, orig_w = (float(v) for v in orig_size)
    scale = torch.tensor([orig_w / w, orig_h / h, orig_w / w, orig_h / h], dtype=torch.float64)
    return boxes.detach().cpu().to(torch.float64).reshape(-1, 4) * scale


def _unique_by_image(predictions: Sequence[tuple[dict, dict]]) -> list[tuple[int, dict, dict]]:
    """(image_id, target, output) with repeated image ids (padded samplers) kept once."""
    seen: dict[int, tuple[int, dict, dict]] = {}
    for target, output in predictions:
        seen.setdefault(int(target["image_id"]), (int(target["image_id"]), target, output))
    if len(seen) != len(predictions):
        logger.warning("%d predictions repeat an image id; each image is evaluated once",
                       len(predictions) - len(seen))
    return list(seen.values())


def _category_id(dataset, label: int) -> int:
    """COCO category id of a 0-based label, with a clear error for a label the dataset lacks."""
    try:
        return int(dataset.label_to_category_id[label])
    except (KeyError, IndexError):
        raise EvalError(f"predicted label {label} has no category id in the dataset's "
                        f"{len(dataset.label_to_category_id)} classes; the model was built "
                        "for other data") from None


def _is_07_dataset(voc_root: str) -> bool:
    """True for a VOC2007 folder, which the 2007 devkit scores with the 11-point AP."""
    return Path(voc_root).resolve().name == "VOC2007"


def run_evaluation(dataset, predictions: Sequence[tuple[dict, dict]], output_dir: str,
                   voc_use_07_metric: bool | None = None,
                   extra_metrics: Mapping[str, float] | None = None) -> dict:
    """COCO metrics (and VOC mAP on VOC-format data) of `predictions`; writes them to `output_dir`.

    `predictions` are (target, output) pairs: target `image_id`, `size` and `orig_size` (h, w),
    output `boxes` [K, 4] xyxy in the `size` frame, `scores` [K], `labels` [K] 0-based. Boxes
    are rescaled to `orig_size`. Writes `coco_results.json`, `voc_results/` (VOC data: datasets
    with `voc_root`, `split`, `file_id`) and `metrics.json`. Only images present in
    `predictions` are evaluated. `voc_use_07_metric` None picks 11-point AP for a VOC2007 folder.
    `extra_metrics` (e.g. the model's mask densities on the test set) join the metrics before
    `metrics.json` is written, once.
    """
    if not predictions:
        raise EvalError("no predictions to evaluate; the test loader yielded no images")
    results, voc_records, image_ids = [], [], []
    is_voc = hasattr(dataset, "voc_root")
    for image_id, target, output in _unique_by_image(predictions):
        image_ids.append(image_id)
        boxes = rescale_boxes(output["boxes"], target["size"], target["orig_size"]).tolist()
        scores = output["scores"].detach().cpu().tolist()
        labels = output["labels"].detach().cpu().tolist()
        file_id = dataset.file_id(image_id) if is_voc else None
        for (x1, y1, x2, y2), score, label in zip(boxes, scores, labels):
            results.append({"image_id": image_id,
                            "category_id": _category_id(dataset, int(label)),
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
            if is_voc:
                voc_records.append((file_id, int(label), score, x1, y1, x2, y2))
    os.makedirs(output_dir, exist_ok=True)
    write_json(os.path.join(output_dir, "coco_results.json"), results, indent=None)
    metrics: dict = evaluate_coco(dataset.coco_gt(), results, img_ids=image_ids)
    if is_voc:
        dets_dir = os.path.join(output_dir, "voc_results")
        write_voc_results(dets_dir, dataset.split, dataset.classes, voc_records)
        use_07 = voc_use_07_metric
        if use_07 is None:
            use_07 = _is_07_dataset(dataset.voc_root)
        voc = evaluate_voc(dataset.voc_root, dataset.split, dets_dir, dataset.classes, use_07,
                           image_ids=[dataset.file_id(i) for i in image_ids])
        metrics.update({"VOC_mAP": voc["mAP"], "VOC_per_class": voc["per_class"],
                        "VOC_no_gt_classes": voc["no_gt_classes"], "VOC_07_metric": use_07})
    metrics.update(extra_metrics or {})
    write_json(os.path.join(output_dir, "metrics.json"), metrics)
    return metrics
