"""Checkpoint converters: released weights of the original projects -> our models.

    result = convert_checkpoint("deformable_detr", cfg, "r50_deformable_detr-checkpoint.pth")
    torch.save({"model": result.state}, "out.pth")      # what tools/convert_checkpoint.py writes

One module per KIND (`deformable_detr`, `sparse_detr`, `sai`, `asag`) holds the name mapping;
`common` holds the steps they share. The result loads strictly into the model the config builds
(for `backbone_only`, into its backbone body); that is checked here before it is returned.
"""
from __future__ import annotations

import importlib

from yacs.config import CfgNode

from fad.errors import CheckpointError

from .common import Conversion, Options, backbone_body, build_model, load_original

# KIND -> (module, key of the state dict in the original file)
KINDS = {
    "deformable_detr": ("fad.convert.deformable_detr", "model"),
    "sparse_detr": ("fad.convert.sparse_detr", "model"),
    "sai": ("fad.convert.sai", "state_dict"),
    "asag": ("fad.convert.asag", "model"),
}


def convert_checkpoint(kind: str, cfg: CfgNode, path: str, options: Options | None = None,
                       trust_file: bool = False) -> Conversion:
    """Convert the original release at `path` for the model of `cfg` (default `Options()`);
    CheckpointError if the file, its tensors or its settings do not fit."""
    options = options or Options()
    if kind not in KINDS:
        raise CheckpointError(f"unknown KIND {kind!r}; choose one of {sorted(KINDS)}")
    if options.backbone_only and kind != "sai":
        raise CheckpointError(f"--backbone-only is for KIND sai, not {kind}")
    module_name, key = KINDS[kind]
    state, extra = load_original(path, key, trust_file)
    result = importlib.import_module(module_name).convert(state, extra, cfg, options, path)
    model = build_model(cfg, max(result.num_classes, 1))
    target = backbone_body(model) if options.backbone_only else model
    target.load_state_dict(result.state, strict=True)
    return result


__all__ = ["KINDS", "Conversion", "Options", "convert_checkpoint"]
