"""Export a trained detector to one ONNX or torch.export graph, pre- and post-processing inside.

    fad-export --config-file CFG --format onnx|pt2 --output FILE MODEL.WEIGHT model_final.pth \\
        [--input-size H W] [--dynamic] [--batch N] [--msda standard|tensorrt]
        [--genotype-file G] [KEY VALUE ...]

The graph takes `images` float32 [N, 3, H, W] (RGB, 0-255, already resized; default size the
config's test size INPUT.MIN_SIZE_TEST x INPUT.MAX_SIZE_TEST) and returns `boxes` [N, K, 4]
(x1, y1, x2, y2 in input pixels), `scores` [N, K], `labels` [N, K] (0-based class index) and
`num_detections` [N], K = the detector's DETECTIONS_PER_IMG, best first, zero rows past
num_detections. `--dynamic` makes N, H and W dynamic (sides above 128 pixels; padding to
INPUT.SIZE_DIVISIBILITY happens inside); else the graph takes exactly `--batch` images of
H x W. `--msda tensorrt` (DETR family, ONNX) writes each multi-scale deformable attention as
one node of TensorRT's plugin instead of standard ops (GridSample). Class names and a searched
detector's genotype come from the checkpoint (as in fad-demo) and are stored in the file's
metadata with the input size and the config's name. fad-test and fad-demo take the `.onnx` as
MODEL.WEIGHT (a fixed-size graph gets each image padded, or shrunk to fit). See docs/export.md.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

from fad.engine.launch import default_argument_parser, parse_args, setup
from fad.engine.tool import run_command
from fad.errors import ConfigError
from fad.export import build_export_module
from fad.export.base import ExportError
from fad.export.writer import (
    FORMATS,
    MSDA_MODES,
    check_dynamic_size,
    check_msda_mode,
    export_metadata,
    require_onnx,
    write_export,
)

from .trained_model import load_trained_model


def main(argv: Sequence[str] | None = None) -> str:
    """Parse `argv`, load MODEL.WEIGHT (checked against the config), write the graph; returns
    the output path."""
    parser = default_argument_parser(__doc__, genotype_file=True)
    parser.add_argument("--format", required=True, metavar="|".join(FORMATS),
                        help="onnx (run by ONNX Runtime and other runtimes) or pt2 "
                             "(torch.export ExportedProgram, torch.export.load)")
    parser.add_argument("--output", required=True, metavar="FILE", help="the file to write")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                        help="input height and width (default: INPUT.MIN_SIZE_TEST "
                             "INPUT.MAX_SIZE_TEST)")
    parser.add_argument("--dynamic", action="store_true",
                        help="dynamic batch, height and width (sides above 128 pixels)")
    parser.add_argument("--batch", type=int, default=1, metavar="N",
                        help="images per call of a fixed-size graph (default 1)")
    parser.add_argument("--msda", metavar="|".join(MSDA_MODES),
                        help="how an ONNX file writes multi-scale deformable attention (DETR "
                             "family): standard ONNX ops with GridSample (default, any runtime) "
                             "or tensorrt (one node of TensorRT's plugin per layer)")
    args = parse_args(parser, argv)
    if args.format not in FORMATS:
        raise ExportError(f"unsupported export format {args.format!r}; choose one of "
                          f"{', '.join(FORMATS)}")
    if args.format == "onnx":
        require_onnx()
    if args.input_size and min(args.input_size) < 1:
        raise ConfigError(f"--input-size must be positive, got {args.input_size}")
    if args.input_size and args.dynamic:
        check_dynamic_size(tuple(args.input_size))
    output = os.path.abspath(args.output)
    args.opts = [*args.opts, "OUTPUT_DIR", os.path.dirname(output)]
    cfg, logger, _ = setup(args, config_name="config_export.yaml")
    trained = load_trained_model(cfg)
    cfg = trained.cfg
    size = tuple(args.input_size or (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST))
    if args.msda is not None:
        check_msda_mode(trained.model, args.format, args.msda)
    msda = args.msda or "standard"
    module = build_export_module(trained.model, cfg, size)
    config_name = os.path.basename(args.config_file) if args.config_file else "(defaults)"
    metadata = export_metadata(cfg, trained.classes, size, args.dynamic, args.batch, config_name,
                               msda)
    logger.info("exporting %s (%s) to %s at %s, %s", cfg.MODEL.META_ARCHITECTURE,
                args.config_file or "defaults", output, "x".join(map(str, size)),
                "dynamic N, H, W" if args.dynamic else f"batch {args.batch}")
    write_export(module, output, args.format, args.batch, args.dynamic, metadata, msda)
    logger.info("wrote %s (%.1f MB)", output, os.path.getsize(output) / 2**20)
    return output


def run() -> None:
    """The `fad-export` console command (also `python tools/export_model.py`)."""
    run_command(main)
