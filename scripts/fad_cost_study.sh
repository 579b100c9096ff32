#!/usr/bin/env bash
# The cost-aware search study of docs/fad.md on the synthetic data (CPU, one thread per run):
# three tiny searches (unconstrained, FLOP targets 0.35 and 0.25 GFLOPs at 128x192, hinge, w 1),
# each followed by the same augment budget, then the table and OUT/ap_vs_gflops.png.
# Runs one after the other (~25 min on an idle core); a finished step is skipped when re-run,
# an interrupted one continues (--resume).
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
out=${OUT:-output/cost_study}
export OMP_NUM_THREADS=1
[ -d "$out/data/synthetic_coco" ] || \
    $py tools/make_synthetic_data.py --out "$out/data" --num-train 300 --num-val 60 --seed 0
common="DATASETS.ROOT $out/data MODEL.DEVICE cpu NUM_THREADS 1"
search="SOLVER.MAX_ITER 60 SOLVER.STEPS (50,) SOLVER.WARMUP_ITERS 10 SOLVER.CHECKPOINT_PERIOD 60
        SOLVER.LOG_PERIOD 20 SEARCH.ARCH_LR 0.03"
augment="SOLVER.MAX_ITER 150 SOLVER.IMS_PER_BATCH 4 SOLVER.STEPS (120,) SOLVER.WARMUP_ITERS 25
         SOLVER.CHECKPOINT_PERIOD 150 SOLVER.LOG_PERIOD 50"
declare -A cost=(
    [none]="MODEL.FAD.COST none"
    [t035]="MODEL.FAD.COST flops MODEL.FAD.COST_TARGET 0.35"
    [t025]="MODEL.FAD.COST flops MODEL.FAD.COST_TARGET 0.25"
)
for name in none t035 t025; do
    [ -f "$out/search_$name/model_final.pth" ] || \
        $py tools/search_net.py --config-file configs/fad/search/fad-fcos_tiny_synthetic.yaml \
            --resume OUTPUT_DIR "$out/search_$name" $common $search ${cost[$name]}
    [ -f "$out/augment_$name/model_final.pth" ] || \
        $py tools/train_net.py --config-file configs/fad/augment/fad-fcos_tiny_synthetic.yaml \
            --genotype-file "$out/search_$name/genotype.log" --resume \
            OUTPUT_DIR "$out/augment_$name" $common $augment
done
$py - "$out" <<'PY'
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fad.config import load_config  # noqa: E402
from fad.engine.checkpoint import Checkpointer  # noqa: E402
from fad.nas.flops import head_flops  # noqa: E402
from fad.nas.genotype import read_genotype_file  # noqa: E402

out = sys.argv[1]
cfg = load_config("configs/fad/augment/fad-fcos_tiny_synthetic.yaml", [])
labels = {"none": "unconstrained", "t035": "target 0.35", "t025": "target 0.25"}
rows = []
print("| search | target (GFLOPs @128x192) | expected | derived head GFLOPs @128x192 "
      "| head GFLOPs @160x256 | AP | AP50 |")
print("|---|---|---|---|---|---|---|")
for name, label in labels.items():
    with open(os.path.join(out, f"search_{name}", "genotype_cost.json")) as f:
        cost = json.load(f)
    with open(os.path.join(out, f"augment_{name}", "inference", "synthetic_coco_val",
                           "metrics.json")) as f:
        metrics = json.load(f)
    genotypes = read_genotype_file(os.path.join(out, f"search_{name}", "genotype.log"))
    classes = Checkpointer.load(os.path.join(out, f"augment_{name}", "model_final.pth"))["classes"]
    aug = head_flops(cfg, len(classes), *genotypes, (160, 256))["head"] / 1e9
    ap, ap50 = metrics["AP"], metrics["AP50"]
    rows.append((label, aug, ap))
    print(f"| {label} | {cost['target'] or '-'} | {cost['expected_head']:.3f} | "
          f"{cost['derived_head_gflops']:.3f} | {aug:.3f} | {ap:.2f} | {ap50:.2f} |")
fig, ax = plt.subplots(figsize=(5, 3.5))
for label, gflops, ap in rows:
    ax.scatter(gflops, ap)
    ax.annotate(label, (gflops, ap), textcoords="offset points", xytext=(5, 5))
ax.set_xlabel("head GFLOPs (one 160x256 image)")
ax.set_ylabel("AP (synthetic val)")
ax.set_title("Cost-aware FAD search, tiny synthetic setting")
ax.grid(alpha=0.3)
ax.margins(x=0.15, y=0.25)
fig.tight_layout()
fig.savefig(os.path.join(out, "ap_vs_gflops.png"), dpi=120)
print(os.path.join(out, "ap_vs_gflops.png"))
PY
