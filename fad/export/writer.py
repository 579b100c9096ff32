"""Write an export module to a file: ONNX (torch.onnx dynamo exporter) or `.pt2` (torch.export).

Both trace the module, our fused ops on their pure-PyTorch references (`reference_ops`), on a
random 0-255 example of [batch, 3, H, W]. With `dynamic`, the batch,
height and width are symbolic (any H, W above `DYNAMIC_MIN_SIDE`: padding to the size
divisibility happens inside, so an image is run at its own size). The metadata (class names,
input size, the config's name, the genotype, ...) is stored as string key/values: ONNX
`metadata_props`, and the `.pt2` archive's extra file `fad_metadata.json`.
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence

import torch
from yacs.config import CfgNode

from fad.ops.msda.onnx import MODES as MSDA_MODES
from fad.ops.msda.onnx import msda_translation_table

from .base import ExportError, ExportModule

FORMATS = ("onnx", "pt2")
OPSET = 18
OUTPUT_NAMES = ("boxes", "scores", "labels", "num_detections")
PT2_METADATA = "fad_metadata.json"
DYNAMIC_MIN_SIDE = 128  # a dynamic graph takes sides above the coarsest stride (P7 >= 2x2)
DYNAMIC_MAX_SIDE = 8192
DYNAMIC_MIN_TRACE = 256  # a dynamic graph is traced at >= 2 images of >= this size (P7 >= 2x2)


@contextlib.contextmanager
def reference_ops() -> Iterator[None]:
    """Inside the block our fused ops (MSDA, depthwise, sparse) run their pure-PyTorch
    references: a graph traced there holds standard ops only, which any runtime runs."""
    from fad.ops.backends import BACKENDS, using

    with contextlib.ExitStack() as stack:
        for op in BACKENDS:
            stack.enter_context(using(op, "reference"))
        yield


def require_onnx() -> None:
    """One-line error naming the `export` extra when onnx / onnxruntime / onnxscript are missing."""
    import importlib.util
    missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m)
               is None]
    if missing:
        raise ExportError(f"ONNX export needs {', '.join(missing)}; install the export extra: "
                          "pip install 'fad[export]' (or pip install onnx onnxruntime onnxscript)")


def example_input(module: ExportModule, batch: int, dynamic: bool) -> torch.Tensor:
    """A random float32 0-255 example [batch, 3, H, W] at the module's input size (checked; for a
    dynamic graph at least 2 images of `DYNAMIC_MIN_TRACE` pixels a side)."""
    h, w = module.input_size
    if batch < 1:
        raise ExportError(f"--batch must be >= 1, got {batch}")
    if dynamic:  # a size 1 (batch, or a map of the coarsest level) would be specialised
        batch, h, w = max(batch, 2), max(h, DYNAMIC_MIN_TRACE), max(w, DYNAMIC_MIN_TRACE)
    gen = torch.Generator().manual_seed(0)
    return torch.rand((batch, 3, h, w), generator=gen) * 255


def check_dynamic_size(size: tuple[int, int]) -> None:
    """A one-line ExportError when a dynamic graph cannot take images of `size` (H, W)."""
    if min(size) <= DYNAMIC_MIN_SIDE:
        raise ExportError(f"--dynamic takes input sizes above {DYNAMIC_MIN_SIDE} pixels a side "
                          f"(the coarsest level's stride), got {size[0]}x{size[1]}; give a "
                          "larger --input-size or export that fixed size (no --dynamic)")


def dynamic_shapes() -> dict:
    """torch.export dynamic shapes: batch >= 1, H and W above `DYNAMIC_MIN_SIDE` (no level's map
    has a side of 1, which the graph would specialise)."""
    from torch.export import Dim
    side = {"min": DYNAMIC_MIN_SIDE + 1, "max": DYNAMIC_MAX_SIDE}
    return {"images": {0: Dim("batch", min=1, max=1024), 2: Dim("height", **side),
                       3: Dim("width", **side)}}


def export_onnx(module: ExportModule, path: str, example: torch.Tensor, dynamic: bool,
                metadata: Mapping[str, str], msda: str = "standard") -> None:
    """Write `module` as ONNX (opset `OPSET`, input `images`, outputs `OUTPUT_NAMES`) to `path`
    with `metadata` in metadata_props; the file passes `onnx.checker`. MSDA nodes are written
    in `msda` mode (`fad.ops.msda.onnx`: "standard" ops, or "tensorrt"'s plugin node)."""
    require_onnx()
    import onnx
    with torch.no_grad(), reference_ops():
        program = torch.onnx.export(
            module, (example,), dynamo=True, opset_version=OPSET, input_names=["images"],
            output_names=list(OUTPUT_NAMES), verbose=False,
            dynamic_shapes=dynamic_shapes() if dynamic else None,
            custom_translation_table=msda_translation_table(msda))
    proto = program.model_proto
    onnx.helper.set_model_props(proto, dict(metadata))
    tmp = f"{path}.tmp"
    onnx.save(proto, tmp)
    onnx.checker.check_model(tmp, full_check=True)
    os.replace(tmp, path)


def export_pt2(module: ExportModule, path: str, example: torch.Tensor, dynamic: bool,
               metadata: Mapping[str, str]) -> None:
    """Write `module` as a torch.export ExportedProgram (`torch.export.save`) to `path`."""
    with torch.no_grad(), reference_ops():
        program = torch.export.export(module, (example,),
                                      dynamic_shapes=dynamic_shapes() if dynamic else None)
    tmp = f"{path}.tmp.pt2"  # torch.export.save wants the .pt2 suffix
    torch.export.save(program, tmp, extra_files={PT2_METADATA: json.dumps(dict(metadata))})
    os.replace(tmp, path)


def check_msda_mode(model: torch.nn.Module, fmt: str, mode: str) -> None:
    """A one-line ExportError when `mode` (fad-export --msda) is not one of MSDA_MODES, is given
    for a `.pt2` (it picks how the ONNX file writes MSDA), or `model` has no MSDA layer."""
    from fad.ops.msda.layer import MSDeformAttn

    if mode not in MSDA_MODES:
        raise ExportError(f"--msda {mode!r} is unknown; use one of {', '.join(MSDA_MODES)}")
    if fmt != "onnx":
        raise ExportError(f"--msda picks how an ONNX file writes multi-scale deformable "
                          f"attention; --format {fmt} has no such choice")
    if not any(isinstance(m, MSDeformAttn) for m in model.modules()):
        raise ExportError(f"--msda applies to detectors with multi-scale deformable attention "
                          f"(Deformable DETR, Sparse DETR); {type(model).__name__} has none")


def export_metadata(cfg: CfgNode, classes: Sequence[str], input_size: Sequence[int],
                    dynamic: bool, batch: int, config_name: str, msda: str = "standard"
                    ) -> dict[str, str]:
    """The metadata stored in an exported file (all values strings, most JSON): `classes`,
    `input_size` [H, W], `dynamic`, `batch` (null when dynamic), `pixel_mean` (INPUT.PIXEL_MEAN,
    of [0, 1] images: what `OnnxDetector` pads a fixed-size input with), `msda` (the MSDA node
    mode), `config` (`config_name`), `meta_architecture`, `genotype` (FAD) and `weights`."""
    return {
        "classes": json.dumps(list(classes)),
        "input_size": json.dumps([int(v) for v in input_size]),
        "dynamic": json.dumps(bool(dynamic)),
        "batch": json.dumps(None if dynamic else int(batch)),
        "pixel_mean": json.dumps([float(v) for v in cfg.INPUT.PIXEL_MEAN]),
        "msda": msda,
        "config": config_name,
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "genotype": cfg.MODEL.FAD.GENOTYPE,
        "weights": os.path.basename(cfg.MODEL.WEIGHT),
    }


def write_export(module: ExportModule, path: str, fmt: str, batch: int, dynamic: bool,
                 metadata: Mapping[str, str], msda: str = "standard") -> None:
    """Export `module` in format `fmt` ("onnx" or "pt2") to `path` (written atomically); the
    MSDA nodes of an ONNX file in `msda` mode (`fad.ops.msda.onnx.MODES`)."""
    if fmt not in FORMATS:
        raise ExportError(f"unsupported export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    example = example_input(module, batch, dynamic)
    if fmt == "onnx":
        export_onnx(module, path, example, dynamic, metadata, msda)
    else:
        export_pt2(module, path, example, dynamic, metadata)
