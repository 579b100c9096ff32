"""Evaluate saved detections: COCO metrics of a results JSON, or devkit VOC mAP of result files.

    fad-eval coco --gt GT.json --dets RESULTS.json --out metrics.json
    fad-eval voc --voc-root DIR --split NAME --dets RESDIR \\
        --out metrics.json [--use-07-metric] [--classes FILE]

COCO metrics are bbox metrics from pycocotools; VOC follows the official devkit (inclusive
pixel IoU, IoU >= 0.5, difficult objects ignored, duplicates false positives). All values are
percentages.
"""
from __future__ import annotations

import argparse
import json
import sys

from fad.data.base import quiet_coco
from fad.engine.tool import add_verbose_flag, run_command, tool_parser
from fad.evaluation import EvalError, evaluate_coco, evaluate_voc, format_per_class, format_table
from fad.evaluation.results import write_json
from fad.evaluation.voc_io import read_classes


def _load_json(path: str, what: str):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise EvalError(f"{path}: {what} not found; check the path") from None
    except json.JSONDecodeError as exc:
        raise EvalError(f"{path}: malformed JSON ({exc}); give a valid {what}") from None


def _check_gt(gt, path: str) -> None:
    """Raise EvalError unless `gt` looks like a COCO detection annotation file."""
    keys = ("images", "annotations", "categories")
    if not isinstance(gt, dict) or not all(k in gt for k in keys):
        raise EvalError(f"{path}: not a COCO annotation file (needs images, annotations, "
                        "categories)")
    for ann in gt["annotations"]:
        missing = [k for k in ("id", "image_id", "category_id", "bbox", "area") if k not in ann]
        if missing:
            raise EvalError(f"{path}: annotation {ann.get('id', '?')} lacks {missing}; "
                            "fix the annotation file")


def _run_coco(args: argparse.Namespace) -> dict:
    gt = _load_json(args.gt, "ground-truth annotation file")
    results = _load_json(args.dets, "results file")
    _check_gt(gt, args.gt)
    if not isinstance(results, list):
        raise EvalError(f"{args.dets}: a COCO results file is a JSON list of "
                        "{image_id, category_id, bbox, score}")
    coco_gt = quiet_coco(gt)
    metrics = evaluate_coco(coco_gt, results, verbose=args.verbose)
    print(format_table(metrics))
    return metrics


def _run_voc(args: argparse.Namespace) -> dict:
    classes = read_classes(args.voc_root, args.classes)
    print(f"classes: {len(classes.names)} from {classes.source}", file=sys.stderr)
    metrics = evaluate_voc(args.voc_root, args.split, args.dets, classes.names,
                           args.use_07_metric)
    print(format_per_class(metrics["per_class"]))
    if metrics["no_gt_classes"]:
        print(f"no ground truth (left out of the mean): {', '.join(metrics['no_gt_classes'])}")
    metric = "11-point (VOC2007)" if args.use_07_metric else "all-point (VOC2010+)"
    print(f"mAP ({metric}): {metrics['mAP']:.2f}")
    return metrics


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser(__doc__)
    sub = parser.add_subparsers(dest="format", required=True)
    coco = sub.add_parser("coco", help="COCO bbox metrics of a results JSON (pycocotools)")
    coco.add_argument("--gt", required=True, metavar="GT.json",
                      help="COCO-format ground-truth annotation JSON")
    coco.add_argument("--dets", required=True, metavar="RESULTS.json",
                      help="COCO results JSON (bbox as xywh)")
    coco.add_argument("--out", required=True, metavar="metrics.json", help="metrics JSON to write")
    add_verbose_flag(coco)
    voc = sub.add_parser("voc", help="devkit VOC mAP of comp4_det_<split>_<class>.txt files")
    voc.add_argument("--voc-root", required=True, metavar="DIR",
                     help="folder holding Annotations/ and ImageSets/")
    voc.add_argument("--split", required=True, metavar="NAME",
                     help="ImageSets/Main/<split>.txt to evaluate on")
    voc.add_argument("--dets", required=True, metavar="RESDIR",
                     help="folder of devkit result files")
    voc.add_argument("--out", required=True, metavar="metrics.json", help="metrics JSON to write")
    voc.add_argument("--use-07-metric", action="store_true", help="11-point AP of VOC2007")
    voc.add_argument("--classes", default=None, metavar="FILE",
                     help="class list, one a line (default: the datasets' rule, in "
                          "docs/data.md; the one used is printed)")
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Parse `argv`, evaluate, write the metrics JSON and return the metrics."""
    args = build_parser().parse_args(argv)
    metrics = _run_coco(args) if args.format == "coco" else _run_voc(args)
    write_json(args.out, metrics)
    print(f"wrote {args.out}", file=sys.stderr)
    return metrics


def run() -> None:
    """The `fad-eval` console command (also `python tools/eval_detections.py`)."""
    run_command(main)
