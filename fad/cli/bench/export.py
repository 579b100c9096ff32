"""Deployment formats: file size, AP on the val set and median latency per image, per detector.

For each of --models (FCOS plain `fcos`, FCOS with the FAD paper's searched head
`fcos_searched`, Deformable DETR `deformable_detr`) at each of --scales:

- `tiny`: the tiny synthetic config (random weights, seed 0, or --weights MODEL=PATH), latency
  and AP on the synthetic val set under --data-root (made by `fad-make-data`; omitted without),
  exported with dynamic sizes (each val image at its own size), or at a fixed --tiny-size H W
  (minutes instead of tens of minutes for the searched head; every val image must come out of
  the test transforms at H x W, e.g. `fad-make-data --min-size 256 --max-size 256` and
  --tiny-size 160 160);
- `r50`: ResNet-50 at --size (default 800 x 1333), random weights, latency only.

Formats, all running the same export graph of `fad.export` (pre- and post-processing inside)
except `eager`: `eager` (the detector's own forward, list of images), `compile` (the export
module under torch.compile, inductor; --no-compile skips it), `onnx` (ONNX Runtime, CPU, the
fad-export file), `pt2` (torch.export.load of the `.pt2`), `aoti` (AOTInductor package; only
with --aoti, as its C++ build is long on the CPU). `size_mb`: the file (the `.pth` state for
eager). Latency: median of --repeats images after --warmup, the formats interleaved per image
(`fad.cli.bench.timing`), batch 1, --threads intra-op threads for torch and ONNX Runtime alike.
A detector without an exporter is a row with its `error` line. `speedup_onnx`: eager / onnx.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable

import torch
from torch import Tensor, nn
from yacs.config import CfgNode

from fad.config import load_config
from fad.errors import FadError
from fad.export import build_export_module
from fad.export.onnx_model import OnnxDetector, open_session, unpad
from fad.export.writer import export_metadata, reference_ops, write_export

from .timing import time_rounds

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
PAPER = os.path.join(ROOT, "configs", "fad", "genotypes", "fad_paper.log")
CONFIGS = {  # model -> scale -> (config file, extra KEY VALUE)
    "fcos": {"tiny": ("configs/fcos/fcos_tiny_synthetic.yaml", []),
             "r50": ("configs/fcos/fcos_R_50_FPN_1x.yaml", [])},
    "fcos_searched": {"tiny": ("configs/fad/augment/fad-fcos_tiny_synthetic.yaml", []),
                      "r50": ("configs/fad/augment/fad-fcos_imprv_R_50_FPN_1x.yaml", [])},
    "deformable_detr": {"tiny": ("configs/deformable_detr/tiny_synthetic.yaml", []),
                        "r50": ("configs/deformable_detr/r50_deformable_detr.yaml", [])},
}
FORMATS = ("eager", "compile", "onnx", "pt2", "aoti")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--scales", nargs="+", default=["tiny", "r50"], choices=["tiny", "r50"])
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1333), metavar=("H", "W"))
    parser.add_argument("--tiny-size", type=int, nargs=2, metavar=("H", "W"),
                        help="export the tiny models at this fixed size (default: dynamic)")
    parser.add_argument("--data-root", default="", metavar="DIR",
                        help="DATASETS.ROOT with synthetic_coco/ (AP of the tiny models)")
    parser.add_argument("--weights", nargs="*", default=[], metavar="MODEL=PATH",
                        help="trained checkpoints of the tiny models (default random weights)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--aoti", action="store_true", help="also AOTInductor (slow build)")


class GraphDetector(nn.Module):
    """A graph of the export contract (images 0-255 -> boxes, scores, labels, num) behind the
    detector API, one image per call (as `OnnxDetector` runs a dynamic graph); a graph of
    `fixed_size` (H, W) takes images of that size only (a one-line error for another)."""

    def __init__(self, graph: Callable[[Tensor], tuple],
                 fixed_size: tuple[int, int] | None = None):
        super().__init__()
        self.graph = graph
        self.fixed_size = fixed_size

    def train(self, mode: bool = True) -> GraphDetector:
        """Sets this module's flag only: a loaded `.pt2` module refuses train() / eval()."""
        self.training = mode
        return self

    def forward(self, images: list[Tensor]) -> list[dict]:
        out = []
        for img in images:
            if self.fixed_size and tuple(img.shape[-2:]) != self.fixed_size:
                raise FadError(f"a val image of {tuple(img.shape[-2:])} for a graph exported "
                               f"at {self.fixed_size}; give --tiny-size the size the test "
                               "transforms make of every val image")
            boxes, scores, labels, num = (torch.as_tensor(o) for o in self.graph(img[None] * 255))
            out.append(unpad(boxes[0], scores[0], labels[0], int(num[0]), 1.0, 1.0,
                             img.shape[-2], img.shape[-1]))
        return out


def _config(model: str, scale: str, args) -> CfgNode:
    path, extra = CONFIGS[model][scale]
    opts = ["MODEL.DEVICE", "cpu", "MODEL.BACKBONE.PRETRAINED", "", *extra]
    if model == "fcos_searched":
        opts += ["MODEL.FAD.GENOTYPE", PAPER]
    if args.data_root:
        opts += ["DATASETS.ROOT", args.data_root]
    cfg = load_config(os.path.join(ROOT, path), opts)
    from fad.modeling.fcos import resolve_genotype
    resolve_genotype(cfg)
    return cfg


def _model(cfg: CfgNode, name: str, scale: str, args) -> tuple[nn.Module, list[str]]:
    from fad.cli.trained_model import load_trained_model
    from fad.modeling import build_detector

    weights = dict(w.split("=", 1) for w in args.weights)
    if scale == "tiny" and name in weights:
        cfg = cfg.clone()
        cfg.MODEL.WEIGHT = weights[name]
        trained = load_trained_model(cfg)
        return trained.model.eval(), trained.classes
    torch.manual_seed(0)
    classes = [f"c{i}" for i in range(80 if scale == "r50" else 4)]
    if scale == "tiny":
        classes = ["red_circle", "green_square", "blue_triangle", "yellow_star"]
    return build_detector(cfg, len(classes)).eval(), classes


def _ap(cfg: CfgNode, detector: nn.Module, classes: list[str], out: str) -> float:
    from fad.engine.evaluate import evaluate_all

    cfg = cfg.clone()
    cfg.OUTPUT_DIR, cfg.TEST.IMS_PER_BATCH = out, 1
    metrics = evaluate_all(cfg, detector, torch.device("cpu"), classes)
    return round(float(next(iter(metrics.values()))["AP"]), 4)


def _bench_one(name: str, scale: str, args, tmp: str) -> dict:
    cfg = _config(name, scale, args)
    model, classes = _model(cfg, name, scale, args)
    size = tuple(args.size) if scale == "r50" else tuple(
        args.tiny_size or (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST))
    dynamic = scale == "tiny" and not args.tiny_size  # runs the val images at their own sizes
    module = build_export_module(model, cfg, size)
    files = {"eager": os.path.join(tmp, f"{name}_{scale}.pth")}
    torch.save(model.state_dict(), files["eager"])
    graphs: dict[str, Callable] = {}
    for fmt in ("onnx", "pt2"):
        files[fmt] = os.path.join(tmp, f"{name}_{scale}.{fmt}")
        write_export(module, files[fmt], fmt, 1, dynamic, export_metadata(
            cfg, classes, size, dynamic, 1, os.path.basename(CONFIGS[name][scale][0])))
    session = open_session(files["onnx"], args.threads)
    graphs["onnx"] = lambda x: session.run(None, {"images": x.numpy()})
    graphs["pt2"] = torch.export.load(files["pt2"]).module()
    if not args.no_compile:
        compiled = torch.compile(module, dynamic=dynamic)

        def run_compiled(x: Tensor) -> tuple:
            with reference_ops():  # our ops' custom kernels have no fake impl to compile with
                return compiled(x)
        graphs["compile"] = run_compiled
    if args.aoti:
        files["aoti"] = torch._inductor.aoti_compile_and_package(
            torch.export.load(files["pt2"]), package_path=os.path.join(tmp, f"{name}.aoti.pt2"))
        graphs["aoti"] = torch._inductor.aoti_load_package(files["aoti"])
    image = torch.rand((1, 3, *size), generator=torch.Generator().manual_seed(0)) * 255
    calls = {"eager": lambda: model([image[0] / 255])}
    calls.update({fmt: (lambda g=g: g(image)) for fmt, g in graphs.items()})
    with torch.no_grad():
        medians = time_rounds(calls, args.warmup, args.repeats).medians()
    row: dict = {"model": name, "scale": scale, "size": list(size), "formats": {}}
    for fmt in calls:
        entry = {"latency_ms": round(1000 * medians[fmt], 1)}
        if fmt in files:
            entry["size_mb"] = round(os.path.getsize(files[fmt]) / 2**20, 2)
        if scale == "tiny" and args.data_root:
            detector = model if fmt == "eager" else (
                OnnxDetector(files["onnx"], args.threads) if fmt == "onnx"
                else GraphDetector(graphs[fmt], None if dynamic else size))
            with torch.no_grad():
                entry["AP"] = _ap(cfg, detector, classes, os.path.join(tmp, f"ap_{fmt}"))
        row["formats"][fmt] = entry
    row["speedup_onnx"] = round(medians["eager"] / medians["onnx"], 2)
    return row


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scale in args.scales:
            for name in args.models:
                try:
                    rows.append(_bench_one(name, scale, args, tmp))
                except FadError as exc:
                    rows.append({"model": name, "scale": scale, "error": str(exc)})
    return {"threads": args.threads, "repeats": args.repeats, "rows": rows}
