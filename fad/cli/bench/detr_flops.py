"""FLOPs and CPU latency: Sparse DETR (rho) vs the Deformable DETR top-k & box-refine baseline.

Both models are ResNet-50 (random weights: FLOPs do not depend on them) with two-stage + box
refinement; Sparse DETR adds rho token selection, the encoder aux heads (unused in eval),
efficient query init and the class-specific proposal head (Roh et al., "Sparse DETR", ICLR 2022).
One input image of --size (default 850 x 1040, about the mean COCO val image after resizing),
batch 1, eval, no_grad, fp32.

FLOPs: `torch.utils.flop_counter.FlopCounterMode`, which counts a multiply-add of convolutions
and matrix products as 2 FLOPs; the MSDA op `fad::ms_deform_attn` has a registered formula that
already returns multiply-adds (5 * D per sampling point: 4 bilinear corners + the weighting).
Reported `*_gmacs` = (counter total - MSDA count) / 2 + MSDA count, i.e. 1 multiply-add =
1 FLOP, the convention of the published GFLOPs (fvcore). Elementwise ops, softmax, gather/
scatter, top-k, matcher and criterion are not counted (as in the reference).

Latency: --repeats rounds of one forward each, the two models alternating after --warmup untimed
rounds; medians. `latency_ratio` = sparse / deformable, `speedup` = its inverse. --latency-size
allows a smaller image where the full one is too slow for the CPU at hand.
"""
from __future__ import annotations

import argparse
import functools

import torch
from torch.utils.flop_counter import FlopCounterMode

from fad.config import get_cfg_defaults
from fad.modeling import build_detector
from fad.ops import get_backend, set_backend

from .timing import time_rounds

MSDA_OP = torch.ops.fad.ms_deform_attn


def _is_msda(op) -> bool:
    """Whether a FlopCounterMode key is the MSDA op (its count is MACs already; the other
    ops' FLOPs are halved into MACs)."""
    return op is MSDA_OP or str(op).startswith("fad.ms_deform")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, nargs=2, default=(850, 1040), metavar=("H", "W"),
                        help="input image for the FLOP count")
    parser.add_argument("--latency-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="input image for the latency (default: --size)")
    parser.add_argument("--rho", type=float, default=0.1, help="Sparse DETR keep ratio")
    parser.add_argument("--depth", type=int, default=50, help="ResNet depth")
    parser.add_argument("--classes", type=int, default=91, help="classifier width (COCO ids: 91)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (0 = FLOPs only)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = keep)")
    parser.add_argument("--msda-backend", default="", help="auto, reference or cpp ('' = keep)")


def build_pair(depth: int, rho: float, classes: int) -> dict[str, torch.nn.Module]:
    """{"deformable": top-k & box refine baseline, "sparse": Sparse DETR at `rho`}, eval mode."""
    cfg = get_cfg_defaults()
    cfg.merge_from_list(["MODEL.META_ARCHITECTURE", "DeformableDETR", "MODEL.BACKBONE.DEPTH", depth,
                         "MODEL.BACKBONE.PRETRAINED", "", "MODEL.DETR.WITH_BOX_REFINE", True,
                         "MODEL.DETR.TWO_STAGE", True])
    sparse = cfg.clone()
    sparse.merge_from_list(["MODEL.META_ARCHITECTURE", "SparseDETR", "MODEL.DETR.RHO", rho,
                            "MODEL.DETR.USE_ENC_AUX_LOSS", True, "MODEL.DETR.EFF_QUERY_INIT", True,
                            "MODEL.DETR.EFF_SPECIFIC_HEAD", True])
    torch.manual_seed(0)
    return {"deformable": build_detector(cfg, classes).eval(),
            "sparse": build_detector(sparse, classes).eval()}


def count_macs(model: torch.nn.Module, image: torch.Tensor) -> dict:
    """Multiply-adds of one forward, in total and per top-level part."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model([image])
    counts = counter.get_flop_counts()

    def macs(key: str) -> float:
        ops = counts.get(key, {})
        msda = sum(v for op, v in ops.items() if _is_msda(op))
        return (sum(ops.values()) - msda) / 2 + msda

    root = next(k for k in counts if k != "Global" and "." not in k)
    parts = {part: macs(f"{root}.{path}") / 1e9 for part, path in (
        ("backbone", "backbone"), ("encoder", "transformer.encoder"),
        ("decoder", "transformer.decoder"), ("scoring", "transformer.scoring"))}
    global_ops = counts["Global"]
    msda = sum(v for op, v in global_ops.items() if _is_msda(op))
    return {"gmacs": macs("Global") / 1e9, "counter_gflops": counter.get_total_flops() / 1e9,
            "msda_gmacs": msda / 1e9,
            "parts_gmacs": {k: round(v, 2) for k, v in parts.items() if v}}


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.msda_backend:
        set_backend("msda", args.msda_backend)
    models = build_pair(args.depth, args.rho, args.classes)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, *args.size, generator=g)
    flops = {name: count_macs(model, image) for name, model in models.items()}
    result = {
        "backbone": f"R{args.depth}", "size": list(args.size), "rho": args.rho,
        "convention": "GMACs: 1 multiply-add = 1 FLOP (FlopCounterMode total / 2, MSDA formula "
                      "already in multiply-adds)",
        "deformable_gmacs": round(flops["deformable"]["gmacs"], 2),
        "sparse_gmacs": round(flops["sparse"]["gmacs"], 2),
        "flops_ratio": round(flops["sparse"]["gmacs"] / flops["deformable"]["gmacs"], 4),
        "deformable_counter_gflops": round(flops["deformable"]["counter_gflops"], 2),
        "sparse_counter_gflops": round(flops["sparse"]["counter_gflops"], 2),
        "deformable_msda_gmacs": round(flops["deformable"]["msda_gmacs"], 3),
        "sparse_msda_gmacs": round(flops["sparse"]["msda_gmacs"], 3),
        "deformable_parts_gmacs": flops["deformable"]["parts_gmacs"],
        "sparse_parts_gmacs": flops["sparse"]["parts_gmacs"],
        "published_flops_ratio": round(105.4 / 177.3, 4),
        "msda_backend": get_backend("msda"), "threads": torch.get_num_threads(),
    }
    if args.repeats > 0:
        size = args.latency_size or args.size
        latency_image = torch.rand(3, *size, generator=g)
        times = time_rounds(
            {n: functools.partial(m, [latency_image]) for n, m in models.items()},
            args.warmup, args.repeats).medians()
        result.update({
            "latency_size": list(size), "repeats": args.repeats,
            "deformable_latency_s": round(times["deformable"], 4),
            "sparse_latency_s": round(times["sparse"], 4),
            "latency_ratio": round(times["sparse"] / times["deformable"], 4),
            "speedup": round(times["deformable"] / times["sparse"], 4),
        })
    return result
