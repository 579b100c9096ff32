"""COCO bbox metrics through pycocotools, with its prints captured instead of shown.

Metrics are percentages (0-100). pycocotools reports -1 for a metric with no ground truth
(e.g. APs when there are no small objects); that value is kept as -1.0.
"""
from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterable, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from fad.errors import EvalError

logger = logging.getLogger(__name__)

# names of COCOeval.stats[0:9], in that order
COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")
_RESULT_KEYS = ("image_id", "category_id", "bbox", "score")


def _check_results(coco_gt: COCO, results: Sequence[dict]) -> None:
    """Raise EvalError on a result whose keys, image id or category id do not fit `coco_gt`."""
    image_ids = set(coco_gt.getImgIds())
    category_ids = set(coco_gt.getCatIds())
    for i, r in enumerate(results):
        missing = [k for k in _RESULT_KEYS if k not in r]
        if missing:
            raise EvalError(f"result {i} lacks {missing}; each result needs keys "
                            f"{list(_RESULT_KEYS)}")
        if len(r["bbox"]) != 4:
            raise EvalError(f"result {i} has bbox {r['bbox']}; give [x, y, width, height]")
        if r["image_id"] not in image_ids:
            raise EvalError(f"result {i} has image_id {r['image_id']} absent from the ground "
                            "truth; evaluate against the annotation file the images came from")
        if r["category_id"] not in category_ids:
            raise EvalError(f"result {i} has category_id {r['category_id']} absent from the ground "
                            f"truth categories {sorted(category_ids)}; map labels to category ids")


def run_cocoeval(coco_gt: COCO, results: Sequence[dict],
                 img_ids: Iterable[int] | None = None) -> tuple[dict[str, float], str]:
    """Bbox metrics of `results` (COCO result dicts, bbox xywh) and pycocotools' summary text.

    `img_ids` restricts the evaluation to those images (images without results count as
    missed ground truth); by default every image of `coco_gt` is evaluated.
    Empty `results` give 0 for every metric.
    """
    _check_results(coco_gt, results)
    if img_ids is not None:
        img_ids = sorted({int(i) for i in img_ids})
        unknown = sorted(set(img_ids) - set(coco_gt.getImgIds()))
        if unknown:
            raise EvalError(f"image ids {unknown[:5]} are absent from the ground truth; "
                            "evaluate against the annotation file the images came from")
    if not results:
        return {k: 0.0 for k in COCO_METRICS}, "no detections: every metric is 0"
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        coco_dt = coco_gt.loadRes([dict(r) for r in results])
        coco_eval = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if img_ids is not None:
            coco_eval.params.imgIds = img_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        summary_start = text.tell()
        coco_eval.summarize()
    stats = np.asarray(coco_eval.stats[: len(COCO_METRICS)], dtype=np.float64)
    metrics = {k: (float(v) * 100.0 if v >= 0 else -1.0) for k, v in zip(COCO_METRICS, stats)}
    return metrics, text.getvalue()[summary_start:].rstrip()


def evaluate_coco(coco_gt: COCO, results: Sequence[dict], img_ids: Iterable[int] | None = None,
                  verbose: bool = False) -> dict[str, float]:
    """AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100 (percent) of `results` on `coco_gt`.

    pycocotools' 12-line summary goes to this module's logger at DEBUG (the tools' log.txt;
    their console with `--verbose`), and to stdout when `verbose`.
    """
    metrics, summary = run_cocoeval(coco_gt, results, img_ids)
    logger.debug("COCO bbox evaluation:\n%s", summary)
    if verbose:
        print(summary)
    return metrics
