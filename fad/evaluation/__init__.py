"""Evaluation: COCO metrics (pycocotools), devkit-exact VOC mAP, result writers, tables."""
from fad.errors import EvalError

from .coco_eval import evaluate_coco
from .results import run_evaluation
from .table import format_per_class, format_table
from .voc_eval import evaluate_voc, write_voc_results

__all__ = ["EvalError", "evaluate_coco", "evaluate_voc", "format_per_class", "format_table",
           "run_evaluation", "write_voc_results"]
