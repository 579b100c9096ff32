"""Latency table of the FAD candidates for a cost-aware search (MODEL.FAD.COST latency).

Per candidate: the forward time of one augment edge (1x1 T -> C, the discrete op, 1x1 C -> T) on
a batch-1 input at every FPN level P3-P7 of the config's cost input size, summed over the levels;
plus `fixed_ms`, the genotype-independent rest of the augment head (cell-input adapters, reduce
convs, predictors). Inference mode, medians of `--repeats` interleaved rounds after one warm-up.
Write it once per device with `--json FILE` and set MODEL.FAD.COST_LATENCY_TABLE FILE; the
search checks that widths, cells, classes and input size match its config.
"""
from __future__ import annotations

import argparse

import torch

from fad.config import load_config
from fad.nas.cells import augment_edge
from fad.nas.flops import fixed_head, level_sizes
from fad.nas.primitives import primitives
from fad.search.cost import cost_input_size, latency_settings

from .timing import time_rounds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-file", default="", metavar="FILE",
                        help="search config (widths, cells, MODEL.FAD.COST_INPUT_SIZE)")
    parser.add_argument("--num-classes", type=int, default=20, help="classes of the detector")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("opts", nargs="*", default=[], metavar="KEY VALUE",
                        help="config overrides, e.g. MODEL.FAD.COST_INPUT_SIZE (416,704)")


@torch.inference_mode()
def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    cfg = load_config(args.config_file or None, list(args.opts))
    f, t = cfg.MODEL.FAD, cfg.MODEL.FAD.TOWER_CHANNELS
    levels = level_sizes(cost_input_size(cfg))
    torch.manual_seed(0)
    edges = {n: augment_edge(n, t, f.EDGE_CHANNELS).to(device).eval()
             for n in primitives(f.DIL3)[:-1]}
    fixed = fixed_head(cfg, args.num_classes).to(device).eval()
    inputs = [torch.randn(1, t, h, w, device=device) for h, w in levels]
    feats = [torch.randn(1, cfg.MODEL.FPN.OUT_CHANNELS, h, w, device=device) for h, w in levels]
    jobs = {n: (lambda e=e: [e(x) for x in inputs]) for n, e in edges.items()}
    jobs["fixed"] = lambda: fixed(feats)
    seconds = time_rounds(jobs, 1, args.repeats, device).medians()
    ms = {n: round(s * 1e3, 4) for n, s in seconds.items()}
    return {"device": str(device), "threads": torch.get_num_threads(), "unit": "ms",
            **latency_settings(cfg, args.num_classes), "levels": [list(s) for s in levels],
            "ops_ms": {n: ms[n] for n in edges}, "fixed_ms": ms["fixed"]}
