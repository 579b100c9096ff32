#!/usr/bin/env bash
# The first run on a CUDA machine: one command, under 8 minutes on one H100, one JSON summary.
#
#   bash scripts/gpu_check.sh [OUT_DIR]        # default output/gpu_check
#
# Steps, each under its own timeout (seconds; a step that runs over is killed, recorded with
# rc 124, and the next step runs):
#   build     the CUDA C++ MSDA extension (prebuilt, else built now by nvcc)
#   selftest  python -m fad.ops.selftest: every op backend vs the reference, CPU and CUDA
#   pytest    pytest -m cuda: the CUDA C++ and Triton MSDA tests (every dtype, strided inputs,
#             a second device when present) and the other cuda-marked tests
#   bench     fad-bench msda --device cuda: triton vs cuda vs the reference
#   data      the synthetic data set (small)
#   search    50-iteration FAD search on the synthetic data, AMP on CUDA
#   augment   100-iteration augment training of the searched genotype, AMP on CUDA
#   ddp       a one-process NCCL DDP run (torchrun, 2 iterations)
# OUT_DIR gets one <step>.log per step and summary.json: {"device", "torch", "ok", "seconds",
# "steps": {step: {"rc", "seconds", "timeout_s", "log"}}, "selftest_failures", "bench"}.
# Exit code 0 when every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
out=${1:-output/gpu_check}
mkdir -p "$out"
: > "$out/steps.tsv"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
unset TRITON_INTERPRET  # the Triton kernels compile for the GPU here

step() {  # step NAME TIMEOUT_S COMMAND...: run it, log it, record rc and seconds
    local name=$1 limit=$2 start rc
    shift 2
    echo "== $name (timeout ${limit}s)"
    start=$(date +%s%N)
    timeout --kill-after=2 "$limit" "$@" > "$out/$name.log" 2>&1
    rc=$?
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( ($(date +%s%N) - start) / 1000000 ))" "$limit" \
        >> "$out/steps.tsv"
    echo "   rc $rc"
}

tiny=fad-fcos_tiny_synthetic.yaml
common=(MODEL.DEVICE cuda SOLVER.AMP True DATASETS.ROOT "$out/datasets")
step build 70 "$py" -c "from fad.ops import build; build.load('msda_cuda')"
step selftest 40 "$py" -m fad.ops.selftest
step pytest 120 "$py" -m pytest -q -p no:cacheprovider -m cuda tests
step bench 40 "$py" tools/benchmark.py msda --device cuda --repeats 10 --json "$out/bench_msda.json"
step data 15 "$py" tools/make_synthetic_data.py --out "$out/datasets" --num-train 64 --num-val 16 \
    --seed 0
step search 65 "$py" tools/search_net.py --config-file configs/fad/search/$tiny \
    --overwrite "${common[@]}" SOLVER.MAX_ITER 50 SOLVER.STEPS "(40,)" \
    SOLVER.CHECKPOINT_PERIOD 50 SOLVER.CHECKPOINT_KEEP 1 OUTPUT_DIR "$out/search"
genotype="$out/search/genotype.log"
[ -f "$genotype" ] || genotype=configs/fad/genotypes/fad_paper.log
step augment 55 "$py" tools/train_net.py --config-file configs/fad/augment/$tiny \
    --genotype-file "$genotype" --overwrite --skip-test "${common[@]}" SOLVER.MAX_ITER 100 \
    SOLVER.STEPS "(80,)" SOLVER.CHECKPOINT_PERIOD 100 SOLVER.CHECKPOINT_KEEP 1 \
    OUTPUT_DIR "$out/augment"
step ddp 40 "$py" -m torch.distributed.run --standalone --nproc_per_node 1 tools/train_net.py \
    --config-file configs/fcos/fcos_tiny_synthetic.yaml --overwrite --skip-test "${common[@]}" \
    SOLVER.MAX_ITER 2 SOLVER.STEPS "(1,)" SOLVER.IMS_PER_BATCH 2 SOLVER.CHECKPOINT_PERIOD 2 \
    SOLVER.CHECKPOINT_KEEP 1 \
    OUTPUT_DIR "$out/ddp"

"$py" - "$out" <<'PY'
import json, pathlib, sys

import torch

out = pathlib.Path(sys.argv[1])
steps = {}
for line in (out / "steps.tsv").read_text().splitlines():
    name, rc, ms, limit = line.split("\t")
    steps[name] = {"rc": int(rc), "seconds": int(ms) / 1000, "timeout_s": int(limit),
                   "log": str(out / f"{name}.log")}
selftest = (out / "selftest.log").read_text(errors="replace").splitlines()
bench = out / "bench_msda.json"
summary = {
    "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
    "torch": torch.__version__, "ok": all(s["rc"] == 0 for s in steps.values()),
    "seconds": round(sum(s["seconds"] for s in steps.values()), 1), "steps": steps,
    "selftest_failures": [line for line in selftest if " FAIL " in f"{line} "],
    "bench": json.loads(bench.read_text()) if bench.exists() else None,
}
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
print(f"{out / 'summary.json'}: ok={summary['ok']} in {summary['seconds']} s; "
      + ", ".join(f"{k} rc {v['rc']}" for k, v in steps.items()))
sys.exit(0 if summary["ok"] else 1)
PY
