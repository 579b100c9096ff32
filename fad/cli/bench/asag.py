"""ASAG head: queries, GFLOPs and CPU latency vs Deformable DETR and four heads; fast path.

Three models in one process, ResNet --depth (50), random weights, --classes (80), batch 1,
eval, fp32, --images random images of --size (default 800 x 1333):

- `asag`: ASAG-A with one decoder head (`MODEL.ASAG.NUM_DECODER_HEADS 1`), the speed setting;
- `asag_4heads`: the same anchor generator and RelationBlock with four heads, all run (its
  decoder is put in training mode, which runs every head; nothing in it is random);
- `deformable`: our Deformable DETR, 6 encoder + 6 decoder layers, 300 queries, single stage.

Head = everything after the backbone: ASAG's anchor generator + RelationBlock + decoder head(s)
(ResNet + FPN are the backbone), Deformable DETR's input projections + encoder + decoder + class
/ box heads (ResNet is the backbone). FLOPs: `torch.utils.flop_counter.FlopCounterMode`, shown as
GMACs (1 multiply-add = 1 FLOP: the counter's conv / matmul FLOPs halved, the MSDA op's formula
already in multiply-adds), on the first image. Latency: medians of --repeats rounds after
--warmup, the models alternating; head latency = the forward with the backbone replaced by its
precomputed output. `asag_fast`: ASAG with MODEL.ASAG.FAST_INFERENCE (same detections).

Random weights make the anchor generator's query count unrepresentative (a trained model emits
~100 / ~300 per COCO image): `mean_queries` is reported for what it is, and --anchor-logit L
sets every coarse anchor's confidence logit to L (e.g. -0.4: uncertain, so every small anchor
probes a finer level) to exercise the probing path.
"""
from __future__ import annotations

import argparse
import copy
import functools
import statistics
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fad.config import get_cfg_defaults
from fad.modeling import build_detector
from fad.modeling.asag import ASAG
from fad.modeling.image_batch import batch_images

from .timing import time_rounds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1333), metavar=("H", "W"))
    parser.add_argument("--depth", type=int, default=50, help="ResNet depth")
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--queries", type=int, default=100, help="ASAG query setting (100/300)")
    parser.add_argument("--images", type=int, default=3, help="random images for the queries")
    parser.add_argument("--anchor-logit", type=float, default=None,
                        help="set every coarse anchor confidence logit (random weights)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (0 = no latency)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = keep)")


def build_models(args: argparse.Namespace) -> dict[str, nn.Module]:
    """{"asag", "asag_4heads", "deformable"} in eval mode (see the module docstring)."""
    cfg = get_cfg_defaults()
    cfg.merge_from_list(["MODEL.BACKBONE.DEPTH", args.depth, "MODEL.BACKBONE.PRETRAINED", ""])
    models = {}
    for name, heads in (("asag", 1), ("asag_4heads", 4)):
        c = cfg.clone()
        c.merge_from_list(["MODEL.META_ARCHITECTURE", "ASAG", "MODEL.ASAG.NUM_QUERIES",
                           args.queries, "MODEL.ASAG.NUM_DECODER_HEADS", heads])
        torch.manual_seed(0)  # same backbone, anchor generator and RelationBlock weights
        models[name] = build_detector(c, args.classes).eval()
        if args.anchor_logit is not None:
            last = models[name].anchor_generator.coarse_mlp[-1]
            with torch.no_grad():
                last.weight[4::5] = 0.0
                last.bias[4::5] = args.anchor_logit
    models["asag_4heads"].decoder.train()
    c = cfg.clone()
    c.merge_from_list(["MODEL.META_ARCHITECTURE", "DeformableDETR"])
    torch.manual_seed(0)
    models["deformable"] = build_detector(c, args.classes).eval()
    for model in models.values():  # FlopCounterMode's module tracker trips on leaf inputs
        model.requires_grad_(False)  # that require grad (Deformable DETR's query embedding)
    return models


def backbone_fn(model: nn.Module) -> Callable[[torch.Tensor], object]:
    """The model's backbone on one image (normalise + pad as its forward does)."""
    def run(image: torch.Tensor):
        batch, _, mask = batch_images([image], model.pixel_mean, model.pixel_std,
                                      model.size_divisibility)
        if isinstance(model, ASAG):
            return model.backbone(batch)
        return model.backbone(batch, mask)
    return run


class _Cached(nn.Module):
    """Stands in for a backbone: returns the output it was given, whatever the input."""

    def __init__(self, out: object):
        super().__init__()
        self.out = out

    def forward(self, *args) -> object:
        return self.out


def head_only(model: nn.Module, image: torch.Tensor) -> nn.Module:
    """A shallow copy of `model` (shared submodules) whose backbone returns its precomputed
    output on `image`: its forward on `image` times the head alone."""
    with torch.no_grad():
        out = backbone_fn(model)(image)
    twin = copy.copy(model)
    twin._modules = dict(model._modules, backbone=_Cached(out))
    return twin


def head_macs(model: nn.Module, image: torch.Tensor) -> dict[str, float]:
    """GMACs of the whole forward, the backbone and the head (total - backbone)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model([image])
    counts = counter.get_flop_counts()

    def macs(ops: dict) -> float:
        msda = sum(v for op, v in ops.items() if "ms_deform" in str(op))
        return ((sum(ops.values()) - msda) / 2 + msda) / 1e9

    root = next(k for k in counts if k != "Global" and "." not in k)
    total, backbone = macs(counts["Global"]), macs(counts.get(f"{root}.backbone", {}))
    parts = {k[len(root) + 1:]: round(macs(v), 3) for k, v in counts.items()
             if k.count(".") == 1 and k.startswith(root + ".") and k != f"{root}.backbone"}
    return {"total": round(total, 2), "backbone": round(backbone, 2),
            "head": round(total - backbone, 3), "head_parts": parts}


def count_queries(model: nn.Module, images: list[torch.Tensor]) -> float:
    """Mean number of valid anchors (queries) per image."""
    counts = []
    hook = model.anchor_generator.register_forward_hook(
        lambda m, i, out: counts.append(int(out.valid.sum())))
    with torch.no_grad():
        for image in images:
            model([image])
    hook.remove()
    return statistics.mean(counts)


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    models = build_models(args)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, *args.size, generator=g) for _ in range(max(args.images, 1))]
    result = {
        "threads": torch.get_num_threads(), "backbone": f"R{args.depth}",
        "size": list(args.size), "queries_setting": args.queries,
        "anchor_logit": args.anchor_logit,
        "convention": "GMACs: 1 multiply-add = 1 FLOP (FlopCounterMode / 2; MSDA in MACs)",
        "note": "random weights: mean_queries is not what a trained model emits "
                "(~100 / ~300 per COCO image)",
        "mean_queries": count_queries(models["asag"], images),
        "deformable_queries": 300,
    }
    for name, model in models.items():
        result[f"{name}_gmacs"] = head_macs(model, images[0])
    if args.repeats > 0:
        fast = copy.deepcopy(models["asag"])
        fast.fast_inference = True
        models["asag_fast"] = fast
        heads = {f"{name}_head": head_only(m, images[0]) for name, m in models.items()}
        calls = {name: functools.partial(m, [images[0]]) for name, m in (models | heads).items()}
        times = time_rounds(calls, args.warmup, args.repeats).medians()
        for name in models:
            result[f"{name}_latency_s"] = round(times[name], 4)
            result[f"{name}_head_latency_s"] = round(times[f"{name}_head"], 4)
        result["fast_vs_full_head_latency"] = round(times["asag_fast_head"] / times["asag_head"], 4)
        result["asag_vs_deformable_head_latency"] = round(
            times["asag_head"] / times["deformable_head"], 4)
        result["repeats"] = args.repeats
    return result
