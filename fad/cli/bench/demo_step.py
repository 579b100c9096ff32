"""The demo's augment training step against the limit its FLOPs set on this machine.

The step is `DetectorStep`'s (as `fad-train` builds it in the demo, `scripts/demo.py`: the layer
changes of `prepare_layers`, SOLVER.MOSAIC_HEAD_LEVELS on: the head's levels packed in one map)
for `--config-file` with the towers of `--genotype-file`, on a random batch of the demo's padded
size. The same step with the head's levels on two threads instead (SOLVER.PARALLEL_HEAD_LEVELS
alone, the demo's step before the mosaic) is timed in the same rounds (`levels_step_s`;
`mosaic_speedup` = the median over rounds of its time over the mosaic's). Its FLOPs (forward +
backward) are counted once by torch's `FlopCounterMode` on the same model with plain PyTorch
ops; the machine's rate is the faster of two dense products timed here, a float32 GEMM
(`torch.mm`, 1024^3) and a channels-last 3x3 convolution (oneDNN, 256 -> 256 channels at 28x20,
batch 8; `fad.cli.bench.flop_limit`). `limit_step_s` = step FLOPs / that rate: no step of this
model runs faster on this machine in float32; `fraction_of_limit` = limit_step_s / step_s
(issue #24 asks for >= 0.9 of each speed-up's limit). `augment_floor_s` = `--iterations` x
limit_step_s is the least time the demo's augment stage (200 iterations) can take here;
`augment_s` the same at the measured speed.
"""
from __future__ import annotations

import argparse

import torch

from fad.config import load_config
from fad.engine.trainer import DetectorStep
from fad.modeling import build_detector
from fad.modeling.fcos import resolve_genotype

from .batch import random_detection_batch
from .flop_limit import limit_keys, step_flops
from .timing import time_rounds

DEMO_CONFIG = "configs/fad/augment/fad-fcos_tiny_synthetic.yaml"
DEMO_GENOTYPE = "configs/fad/genotypes/fad_paper.log"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-file", default=DEMO_CONFIG, help="augment config")
    parser.add_argument("--genotype-file", default=DEMO_GENOTYPE, help="genotype.log")
    parser.add_argument("--size", type=int, nargs=2, default=(224, 160), metavar=("H", "W"),
                        help="padded batch size (the demo's: 160 px short side, <= 224 long)")
    parser.add_argument("--batch", type=int, default=0,
                        help="images per step (0: the config's SOLVER.IMS_PER_BATCH)")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=200,
                        help="the augment stage's iterations (scripts/demo.py: 200)")
    parser.add_argument("--repeats", type=int, default=5)


def run(args: argparse.Namespace) -> dict:
    cfg = load_config(args.config_file, ["MODEL.DEVICE", "cpu", "SOLVER.PARALLEL_HEAD_LEVELS",
                                         True, "SOLVER.MOSAIC_HEAD_LEVELS", True])
    cfg.defrost()
    resolve_genotype(cfg, args.genotype_file)
    batch_size = args.batch or cfg.SOLVER.IMS_PER_BATCH
    batch = random_detection_batch(args.size, batch_size, args.classes)
    torch.manual_seed(0)
    flops = step_flops(build_detector(cfg, args.classes).train(), batch)
    torch.manual_seed(0)
    model = build_detector(cfg, args.classes)
    step = DetectorStep(cfg, model, torch.device("cpu"))
    gap = model.head.mosaic_gap

    def run_step(mosaic_gap: int) -> None:
        model.head.mosaic_gap = mosaic_gap  # 0: the levels on two threads
        step.run(batch)

    samples = time_rounds({"step": lambda: run_step(gap), "levels": lambda: run_step(0)}, 1,
                          args.repeats, grad=True)
    medians = samples.medians()
    step_s = medians["step"]
    limit = limit_keys(flops, {"": step_s}, args.repeats)
    return {"device": "cpu", "config": args.config_file, "genotype": args.genotype_file,
            "input": list(args.size), "batch": batch_size, "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "step_s": round(step_s, 4), "step_gflops": round(flops / step_s / 1e9, 1),
            "levels_step_s": round(medians["levels"], 4),
            "mosaic_speedup": round(samples.median_ratio("levels", "step"), 3), **limit,
            "iterations": args.iterations,
            "augment_floor_s": round(args.iterations * limit["limit_step_s"], 1),
            "augment_s": round(args.iterations * step_s, 1)}
