"""Evaluate a detector: `python tools/test_net.py --config-file CFG MODEL.WEIGHT CKPT [KEY VALUE ...]`.

Writes `coco_results.json` and `metrics.json` (AP, AP50, AP75, APs, APm, APl; VOC mAP for
VOC-format sets) to OUTPUT_DIR/inference/<dataset>/ and prints the table. A checkpoint of a
searched detector carries its genotype, so `--genotype-file` is only needed for foreign weights.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import argument_parser, build_model, run_tool, setup  # noqa: E402

from fad.data import build_dataset, make_test_loader  # noqa: E402
from fad.engine.checkpoint import Checkpointer, model_state  # noqa: E402
from fad.engine.distributed import is_main_process, synchronize  # noqa: E402
from fad.engine.hooks import collect_log_stats  # noqa: E402
from fad.engine.inference import inference  # noqa: E402
from fad.evaluation import format_table, run_evaluation  # noqa: E402
from fad.utils.io import atomic_write_text  # noqa: E402


def evaluate_all(cfg, model, device, logger, classes: list[str]) -> dict:
    """Evaluate `model` (trained on `classes`) on every DATASETS.TEST name.

    Returns {name: metrics} on the main rank.
    """
    results = {}
    for name in cfg.DATASETS.TEST:
        dataset = build_dataset(cfg, [name], is_train=False)
        if list(dataset.classes) != list(classes):
            raise SystemExit(f"error: test set {name} has classes {list(dataset.classes)} but the "
                             f"model was trained on {list(classes)}")
        preds = inference(model, make_test_loader(cfg, dataset), device)
        stats = collect_log_stats(model)
        if is_main_process():
            out_dir = os.path.join(cfg.OUTPUT_DIR, "inference", name)
            metrics = run_evaluation(dataset, preds, out_dir)
            if stats:  # e.g. SparseResNet mask densities and backbone GMACs on the test set
                metrics.update(stats)
                atomic_write_text(os.path.join(out_dir, "metrics.json"), json.dumps(metrics, indent=2))
            logger.info("results on %s (%d images), written to %s:\n%s%s", name, len(dataset),
                        out_dir, format_table(metrics),
                        "".join(f"\n{k}: {v:.4f}" for k, v in sorted(stats.items())))
            results[name] = metrics
        synchronize()
    return results


def main() -> None:
    args = argument_parser(__doc__).parse_args()
    cfg, logger, device = setup(args)
    if not cfg.MODEL.WEIGHT:
        raise SystemExit("error: give the weights to test: MODEL.WEIGHT path/to/model_final.pth")
    state = Checkpointer.load(cfg.MODEL.WEIGHT)
    genotype_file = args.genotype_file
    if not genotype_file and "genotype" in state:
        fd, genotype_file = tempfile.mkstemp(suffix="-genotype.log")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(state["genotype"])
        logger.info("using the genotype stored in %s", cfg.MODEL.WEIGHT)
    classes = state.get("classes")
    if classes is None:
        classes = build_dataset(cfg, cfg.DATASETS.TEST[:1], is_train=False).classes
    model = build_model(cfg, len(classes), genotype_file)
    model.load_state_dict(model_state(state))
    evaluate_all(cfg, model.to(device), device, logger, classes)


if __name__ == "__main__":
    run_tool(main)
