"""VOC mAP of devkit result files, with exactly the rules of the official devkit (see voc_ap)."""
from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from fad.data.voc_format import VOCObject, read_split_file, read_voc_xml
from fad.errors import EvalError

from .voc_ap import ClassGroundTruth, average_precision, match_detections, precision_recall
from .voc_io import read_classes, read_detections, result_file, split_file, write_voc_results

__all__ = ["evaluate_voc", "load_ground_truth", "write_voc_results"]

logger = logging.getLogger(__name__)


def load_ground_truth(voc_root: str, image_ids: Sequence[str],
                      classes: Sequence[str]) -> dict[str, dict[str, ClassGroundTruth]]:
    """class -> image id -> that class's objects, read from `voc_root/Annotations/<id>.xml`.

    Objects of classes outside `classes` are not evaluated (a warning gives their count).
    """
    per_class: dict[str, dict[str, list[VOCObject]]] = {c: {} for c in classes}
    skipped: Counter[str] = Counter()
    for image_id in image_ids:
        xml = os.path.join(voc_root, "Annotations", f"{image_id}.xml")
        for obj in read_voc_xml(xml).objects:
            if obj.name in per_class:
                per_class[obj.name].setdefault(image_id, []).append(obj)
            else:
                skipped[obj.name] += 1
    if skipped:
        logger.warning("%s: %d objects of classes outside the class list were not evaluated: %s",
                       voc_root, sum(skipped.values()), dict(skipped))
    return {
        c: {
            image_id: ClassGroundTruth(np.asarray([o.box for o in objs], dtype=np.float64),
                                       np.asarray([o.difficult for o in objs], dtype=bool))
            for image_id, objs in images.items()
        }
        for c, images in per_class.items()
    }


def evaluate_voc(voc_root: str, split: str, dets_dir: str, classes: Sequence[str] | None = None,
                 use_07_metric: bool = False, image_ids: Iterable[str] | None = None) -> dict:
    """Devkit AP of the result files `dets_dir/comp4_det_<split>_<class>.txt`.

    `classes` defaults to the datasets' rule (`voc_io.read_classes`). `image_ids`
    restricts the evaluation to those images of the split (default: the whole split);
    detections on other images of the split are then left out.
    Returns {"mAP": percent, "per_class": {class: percent, or None without ground truth},
    "no_gt_classes": [classes without non-difficult objects, left out of the mean]}.
    """
    classes = list(classes) if classes is not None else read_classes(voc_root).names
    split_ids = read_split_file(split_file(voc_root, split))
    known = set(split_ids)
    selected = split_ids if image_ids is None else list(dict.fromkeys(image_ids))
    missing = sorted(set(selected) - known)
    if missing:
        raise EvalError(f"images {missing[:5]} are not in {voc_root}/ImageSets/Main/{split}.txt; "
                        "evaluate with the split the detections were made on")
    ground_truth = load_ground_truth(voc_root, selected, classes)
    per_class: dict[str, float | None] = {}
    for name in classes:
        dets = read_detections(result_file(dets_dir, split, name), known)
        if image_ids is not None:
            dets = dets.subset(set(selected))
        gt = ground_truth[name]
        num_positives = int(sum((~g.difficult).sum() for g in gt.values()))
        if num_positives == 0:
            per_class[name] = None
            continue
        tp, fp = match_detections(dets.image_ids, dets.scores, dets.boxes, gt)
        recall, precision = precision_recall(tp, fp, num_positives)
        per_class[name] = 100.0 * average_precision(recall, precision, use_07_metric)
    no_gt = [c for c, ap in per_class.items() if ap is None]
    scored = [ap for ap in per_class.values() if ap is not None]
    if not scored:
        raise EvalError(f"{voc_root}: no non-difficult object of any class {classes} in split "
                        f"{split!r}; check the split and the class list")
    if no_gt:
        logger.warning("classes without ground truth, left out of the mean: %s", no_gt)
    return {"mAP": float(np.mean(scored)), "per_class": per_class, "no_gt_classes": no_gt}
