"""Checkpoint converters: released weights of the original projects -> our models.

    result = convert_checkpoint("deformable_detr", cfg, "r50_deformable_detr-checkpoint.pth")
    torch.save({"model": result.state}, "out.pth")      # what tools/convert_checkpoint.py writes

One module per KIND (`deformable_detr`, `sparse_detr`, `sai`, `asag`) holds the name mapping
(`convert`) and the key of the state dict in the release file (`STATE_KEY`);
`common` holds the steps they share. The result loads strictly into the model the config builds
(for `backbone_only`, into its backbone body); that is checked here before it is returned.
"""
from __future__ import annotations

from yacs.config import CfgNode

from fad.errors import CheckpointError
from fad.utils.registry import Registry

from .common import Conversion, Options, backbone_body, build_model, load_original

CONVERTERS = Registry("KIND", CheckpointError, {
    "deformable_detr": "fad.convert.deformable_detr",
    "sparse_detr": "fad.convert.sparse_detr",
    "sai": "fad.convert.sai",
    "asag": "fad.convert.asag",
})


def convert_checkpoint(kind: str, cfg: CfgNode, path: str, options: Options | None = None,
                       trust_file: bool = False) -> Conversion:
    """Convert the original release at `path` for the model of `cfg` (default `Options()`);
    CheckpointError if the file, its tensors or its settings do not fit."""
    options = options or Options()
    converter = CONVERTERS.get(kind)
    if options.backbone_only and kind != "sai":
        raise CheckpointError(f"--backbone-only is for KIND sai, not {kind}")
    state, extra = load_original(path, converter.STATE_KEY, trust_file)
    result = converter.convert(state, extra, cfg, options, path)
    model = build_model(cfg, max(result.num_classes, 1))
    target = backbone_body(model) if options.backbone_only else model
    target.load_state_dict(result.state, strict=True)
    return result


__all__ = ["CONVERTERS", "Conversion", "Options", "convert_checkpoint"]
