"""Save-time cost of the checkpoint records (docs/RELIABILITY.md): for a tiny and an R-50 FCOS
checkpoint (model + one momentum buffer per parameter), the best of 3 of `torch.save`, sha256
of the written bytes, and `fad.utils.io.atomic_torch_save` (save + sha256 + fsync + rename).

    OMP_NUM_THREADS=1 python scripts/checkpoint_cost.py [--out /tmp/checkpoint_cost.pth]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import time

import torch

from fad.config import load_config
from fad.modeling import build_detector
from fad.utils.io import atomic_torch_save

MODELS = (  # (config, classes, overrides)
    ("configs/fcos/fcos_tiny_synthetic.yaml", 4,
     ["MODEL.FPN.OUT_CHANNELS", "32", "MODEL.FCOS.NUM_CONVS", "1"]),
    ("configs/fcos/fcos_R_50_FPN_1x.yaml", 80, []),
)


def measure(config: str, classes: int, opts: list[str], path: str) -> str:
    """One line: checkpoint size and the best of 3 of each way of writing it."""
    cfg = load_config(config, ["MODEL.DEVICE", "cpu", "MODEL.BACKBONE.PRETRAINED", "", *opts])
    model = build_detector(cfg, classes)
    state = {"model": model.state_dict(),
             "optimizer": {k: p.detach().clone() for k, p in model.named_parameters()}}
    best: dict[str, float] = {}
    for _ in range(3):
        start = time.perf_counter()
        torch.save(state, path)
        times = {"torch.save": time.perf_counter() - start}
        with open(path, "rb") as f:
            data = f.read()
        start = time.perf_counter()
        hashlib.sha256(data).hexdigest()
        times["sha256"] = time.perf_counter() - start
        start = time.perf_counter()
        atomic_torch_save(state, path)
        times["atomic_torch_save"] = time.perf_counter() - start
        best = {k: min(best.get(k, v), v) for k, v in times.items()}
    size = os.path.getsize(path) / 2**20
    os.remove(path)
    return f"{config}: {size:.1f} MiB; " + "; ".join(f"{k} {v:.2f} s" for k, v in best.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/tmp/checkpoint_cost.pth", help="scratch file")
    args = parser.parse_args()
    for config, classes, opts in MODELS:
        print(measure(config, classes, opts, args.out), flush=True)


if __name__ == "__main__":
    main()
