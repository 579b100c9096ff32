"""The main job on the built-in synthetic data, on the CPU in 3-7 minutes (`bash scripts/demo.sh`):
synthetic data -> FAD search -> genotype.log + diagrams -> augment training -> COCO table ->
detections drawn on the val images.

Each stage is the fad-* command printed before it (`--dry-run` prints them all and stops: they
run the same job from a shell), run from this one process (`fad.cli.pipeline`: torch and the
tools are imported once, each stage forked from here). Outputs go under $OUT (default
output/demo); a re-run starts again (--overwrite replaces the earlier demo's runs there).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fad.cli.pipeline import Command, check, preload, start, tool

SEARCH_CONFIG = "configs/fad/search/fad-fcos_tiny_synthetic.yaml"
AUGMENT_CONFIG = "configs/fad/augment/fad-fcos_tiny_synthetic.yaml"
# The compiled CPU kernels the stages use, built in the background (first run on a machine only,
# ~12 s each): the search's (depthwise 3x3, edge mixing) while the data is drawn and the search
# starts up (the search waits on each build's lock, then loads it), the augment's (GroupNorm +
# ReLU, the convolutions' weight gradient) while the search runs. Without a compiler each tool
# falls back to PyTorch's ops and says so itself.
KERNELS = ("depthwise_cpu", "mix_cpu", "gn_relu_cpu", "conv_wgrad_cpu")


def has_amx_bf16() -> bool:
    """Whether this CPU has AMX-BF16 (Linux: /proc/cpuinfo)."""
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


def stages(out: str) -> dict[str, Command]:
    """The job's stages, by name, for outputs under `out`."""
    search, augment = f"{out}/search", f"{out}/augment"
    # On a CPU with AMX-BF16 the augment trains its R-18 + FPN and the towers' big 3x3 convs in
    # bf16 (SOLVER.AMP_CPU_SCOPE towers; docs/fad.md); GroupNorms, predictors, losses and eval
    # stay fp32.
    amp = ("SOLVER.AMP_CPU", "True", "SOLVER.AMP_CPU_SCOPE", "towers") if has_amx_bf16() else ()
    return {
        "kernels": Command(f"{os.path.relpath(sys.executable)} -m fad.ops",
                           "fad.ops.__main__:main", KERNELS),
        "data": tool("fad-make-data", "--out", "datasets", "--num-train", "300",
                     "--num-val", "60", "--seed", "0"),
        # SOLVER.PARALLEL_HEAD_LEVELS: the search's steps, the augment's evaluation (and
        # fad-demo's) run the head's FPN levels in two groups on two threads (docs/ops.md);
        # SOLVER.MOSAIC_HEAD_LEVELS: the augment's training step runs them packed in one map,
        # the towers once (docs/fad.md).
        "search": tool("fad-search", "--config-file", SEARCH_CONFIG, "--overwrite",
                       "SOLVER.MAX_ITER", "40", "SOLVER.STEPS", "(30,)",
                       "SOLVER.CHECKPOINT_PERIOD", "20", "SOLVER.CHECKPOINT_KEEP", "1",
                       "SOLVER.PARALLEL_HEAD_LEVELS", "True", "OUTPUT_DIR", search),
        "diagrams": tool("fad-visualize", f"{search}/genotype.log", "--out", f"{out}/diagrams",
                         "--format", "png"),
        "augment": tool("fad-train", "--config-file", AUGMENT_CONFIG,
                        "--genotype-file", f"{search}/genotype.log", "--overwrite",
                        "SOLVER.MAX_ITER", "200", "SOLVER.STEPS", "(160,)",
                        "SOLVER.CHECKPOINT_PERIOD", "100", "SOLVER.CHECKPOINT_KEEP", "1",
                        "SOLVER.PARALLEL_HEAD_LEVELS", "True", "SOLVER.MOSAIC_HEAD_LEVELS", "True",
                        "OUTPUT_DIR", augment, *amp),
        "detections": tool("fad-demo", "--config-file", AUGMENT_CONFIG,
                           "MODEL.WEIGHT", f"{augment}/model_final.pth",
                           "SOLVER.PARALLEL_HEAD_LEVELS", "True",
                           "--input", "datasets/synthetic_coco/images/val",
                           "--output", f"{out}/detections"),
    }


def run(out: str) -> None:
    """Run the stages: the kernels build while the data is drawn and the search runs; the
    diagrams are drawn while the augment starts up (their log printed after its own)."""
    s = stages(out)
    data = start(s["data"])
    kernels = start(s["kernels"], log=os.devnull)
    preload(*s.values())  # the tools' imports (torch, torchvision) while the data is drawn
    check(data.wait())
    check(start(s["search"]).wait())
    kernels.wait()  # its lines are only "ready" / "unavailable": each tool says it again
    os.makedirs(f"{out}/diagrams", exist_ok=True)
    diagrams_log = f"{out}/diagrams/visualize.log"
    Path(diagrams_log).unlink(missing_ok=True)
    diagrams = start(s["diagrams"], log=diagrams_log)
    check(start(s["augment"]).wait())
    code = diagrams.wait()
    print(Path(diagrams_log).read_text(), end="", flush=True)
    check(code)
    check(start(s["detections"]).wait())
    print(f"""
Done. Outputs:
  search:    {out}/search/genotype.log (box line, cls line), checkpoints, tb/
             (tensorboard --logdir {out})
  pictures:  {out}/search/alphas.png (architecture weights), winning_ops.png, genotype_history.log
  diagrams:  {out}/diagrams/*.png and *.gv
  augment:   {out}/augment/model_final.pth, log.txt
  eval:      {out}/augment/inference/synthetic_coco_val/metrics.json (table printed above)
  demo:      {out}/detections/*.jpg (boxes drawn), detections.json
Re-evaluate: {tool("fad-test").name} --config-file {AUGMENT_CONFIG} \\
    MODEL.WEIGHT {out}/augment/model_final.pth OUTPUT_DIR {out}/augment""")


def main(argv: list[str] | None = None) -> None:
    """Parse `argv`; run the job, or with --dry-run print its commands."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true",
                        help="print the stages' commands (a shell runs the same job) and stop")
    args = parser.parse_args(argv)
    out = os.environ.get("OUT", "output/demo")
    if args.dry_run:
        for stage in stages(out).values():
            print(stage.line())
        return
    run(out)


if __name__ == "__main__":
    main()
