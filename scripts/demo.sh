#!/usr/bin/env bash
# The main job on the built-in synthetic data, on the CPU in 3-7 minutes (2 min 46 s on a quiet 2-core Xeon):
# synthetic data -> FAD search -> genotype.log + diagrams -> augment training -> COCO table.
# A re-run starts again: --overwrite replaces the earlier demo's runs under $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
out=${OUT:-output/demo}
# The compiled CPU kernels build in the background (first run on a machine only, ~12 s each):
# the search's (depthwise 3x3, edge mixing) while the data is drawn and the search starts up
# (the search waits on each build's lock, then loads it), the augment's (GroupNorm + ReLU, the
# convolutions' weight gradient) while the search runs. Without a compiler each tool falls back
# to PyTorch's ops and says so itself.
$py -c "from fad.ops.build import load_error
for name in ('depthwise_cpu', 'mix_cpu', 'gn_relu_cpu', 'conv_wgrad_cpu'): load_error(name)" >/dev/null 2>&1 &
build=$!
$py tools/make_synthetic_data.py --out datasets --num-train 300 --num-val 60 --seed 0
# SOLVER.PARALLEL_HEAD_LEVELS: the search's steps, the augment's evaluation (and fad-demo's) run
# the head's FPN levels in two groups on two threads (docs/ops.md); SOLVER.MOSAIC_HEAD_LEVELS:
# the augment's training step runs them packed in one map, the towers once (docs/fad.md).
$py tools/search_net.py --config-file configs/fad/search/fad-fcos_tiny_synthetic.yaml --overwrite \
    SOLVER.MAX_ITER 40 SOLVER.STEPS "(30,)" SOLVER.CHECKPOINT_PERIOD 20 SOLVER.CHECKPOINT_KEEP 1 \
    SOLVER.PARALLEL_HEAD_LEVELS True OUTPUT_DIR "$out/search"
wait "$build" || true
# The diagrams are drawn while the augment starts up (its log stays whole: theirs comes after).
mkdir -p "$out/diagrams"
$py tools/visualize_genotype.py "$out/search/genotype.log" --out "$out/diagrams" --format png \
    >"$out/diagrams/visualize.log" 2>&1 &
draw=$!
# On a CPU with AMX-BF16 the augment trains its R-18 + FPN and the towers' big 3x3 convs in bf16
# (SOLVER.AMP_CPU_SCOPE towers; docs/fad.md); GroupNorms, predictors, losses and eval stay fp32.
amp=()
if grep -qw amx_bf16 /proc/cpuinfo 2>/dev/null; then
    amp=(SOLVER.AMP_CPU True SOLVER.AMP_CPU_SCOPE towers)
fi
$py tools/train_net.py --config-file configs/fad/augment/fad-fcos_tiny_synthetic.yaml \
    --genotype-file "$out/search/genotype.log" --overwrite \
    SOLVER.MAX_ITER 200 SOLVER.STEPS "(160,)" SOLVER.CHECKPOINT_PERIOD 100 SOLVER.CHECKPOINT_KEEP 1 \
    SOLVER.PARALLEL_HEAD_LEVELS True SOLVER.MOSAIC_HEAD_LEVELS True OUTPUT_DIR "$out/augment" \
    ${amp[@]+"${amp[@]}"}
wait "$draw" && cat "$out/diagrams/visualize.log" || { cat "$out/diagrams/visualize.log"; exit 1; }
$py tools/demo.py --config-file configs/fad/augment/fad-fcos_tiny_synthetic.yaml \
    MODEL.WEIGHT "$out/augment/model_final.pth" SOLVER.PARALLEL_HEAD_LEVELS True \
    --input datasets/synthetic_coco/images/val --output "$out/detections"
cat <<MSG

Done. Outputs:
  search:    $out/search/genotype.log (box line, cls line), checkpoints, tb/ (tensorboard --logdir $out)
  pictures:  $out/search/alphas.png (architecture weights), winning_ops.png, genotype_history.log
  diagrams:  $out/diagrams/*.png and *.gv
  augment:   $out/augment/model_final.pth, log.txt
  eval:      $out/augment/inference/synthetic_coco_val/metrics.json (table printed above)
  demo:      $out/detections/*.jpg (boxes drawn), detections.json
Re-evaluate: $py tools/test_net.py --config-file configs/fad/augment/fad-fcos_tiny_synthetic.yaml \\
    MODEL.WEIGHT $out/augment/model_final.pth OUTPUT_DIR $out/augment
MSG
