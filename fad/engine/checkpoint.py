"""Atomic checkpoints with a `last_checkpoint` pointer for `--resume`, retention of periodic
checkpoints, and weights loading that says why a checkpoint does not fit the model."""
from __future__ import annotations

import os
import re
from collections.abc import Sequence

import torch
import yaml
from torch import nn
from yacs.config import CfgNode

from fad.errors import CheckpointError, GenotypeError
from fad.nas.genotype import parse_genotype_text
from fad.utils.io import atomic_torch_save, atomic_write_text

PERIODIC = re.compile(r"model_\d{7}\.pth")  # the trainer's periodic/interrupt checkpoints

# Config keys that change the model's weights (names or shapes): when a checkpoint does not fit,
# those whose value in the checkpoint's `cfg` differs from the current config are the reason.
ARCHITECTURE_KEYS = (
    "MODEL.META_ARCHITECTURE", "MODEL.BACKBONE.NAME", "MODEL.BACKBONE.DEPTH",
    "MODEL.BACKBONE.NORM", "MODEL.BACKBONE.WIDTH_PER_GROUP", "MODEL.BACKBONE.GROUPS",
    "MODEL.FPN.OUT_CHANNELS", "MODEL.FPN.USE_P5_FOR_P6", "MODEL.FCOS.NUM_CONVS",
    "MODEL.FAD.TOWER_CHANNELS", "MODEL.FAD.EDGE_CHANNELS", "MODEL.FAD.NUM_NODES",
    "MODEL.FAD.BOX_CELLS", "MODEL.FAD.CLS_CELLS", "MODEL.FAD.SEARCH_CELLS", "MODEL.FAD.DIL3",
    "MODEL.SPARSE.MASKED", "MODEL.SPARSE.STAGE_WITH_DCN",
    "MODEL.DETR.D_MODEL", "MODEL.DETR.NHEADS", "MODEL.DETR.ENC_LAYERS", "MODEL.DETR.DEC_LAYERS",
    "MODEL.DETR.DIM_FEEDFORWARD", "MODEL.DETR.NUM_FEATURE_LEVELS", "MODEL.DETR.ENC_N_POINTS",
    "MODEL.DETR.DEC_N_POINTS", "MODEL.DETR.NUM_QUERIES", "MODEL.DETR.WITH_BOX_REFINE",
    "MODEL.DETR.TWO_STAGE", "MODEL.DETR.RHO", "MODEL.DETR.EFF_SPECIFIC_HEAD",
)


class Checkpointer:
    """Writes `output_dir/<name>.pth` atomically and records it in `output_dir/last_checkpoint`."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir

    def save(self, name: str, state: dict) -> str:
        path = os.path.join(self.output_dir, f"{name}.pth")
        atomic_torch_save(state, path)
        atomic_write_text(os.path.join(self.output_dir, "last_checkpoint"), os.path.basename(path))
        return path

    def prune(self, keep: int) -> list[str]:
        """Delete all but the newest `keep` periodic checkpoints (`model_XXXXXXX.pth`); keep <= 0
        keeps all. model_final.pth and the checkpoint `last_checkpoint` names always stay.
        Returns the deleted paths."""
        if keep <= 0:
            return []
        last = self.last()
        names = sorted(n for n in os.listdir(self.output_dir) if PERIODIC.fullmatch(n))
        old = [os.path.join(self.output_dir, n) for n in names[:-keep]]
        old = [p for p in old if last is None or not os.path.samefile(p, last)]
        for path in old:
            os.remove(path)
        return old

    def last(self) -> str | None:
        """Path of the newest checkpoint of this output dir, or None."""
        pointer = os.path.join(self.output_dir, "last_checkpoint")
        if not os.path.isfile(pointer):
            return None
        with open(pointer, encoding="utf-8") as f:
            path = os.path.join(self.output_dir, f.read().strip())
        return path if os.path.isfile(path) else None

    @staticmethod
    def load(path: str) -> dict:
        """Read a checkpoint on the CPU; a missing or unreadable file is a one-line error."""
        if not os.path.isfile(path):
            raise CheckpointError(f"checkpoint {path} does not exist; check MODEL.WEIGHT or the "
                                  "output folder")
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
            raise CheckpointError(f"checkpoint {path} is corrupt or not a torch file ({exc}); "
                                  "delete it and resume from an earlier one") from None


def load_model_weights(model: nn.Module, state: dict, source: str, cfg: CfgNode | None = None,
                       classes: Sequence[str] | None = None, genotype: str | None = None) -> None:
    """Load the weights of checkpoint `state` (read from `source`) into `model`.

    Weights that do not fit are a one-line CheckpointError saying why: what the checkpoint
    stores (its `cfg` dump, `classes`, `genotype`) compared with the current `cfg`, `classes`
    and `genotype` (each compared when given), else which weights are missing, unexpected or
    of another shape.
    """
    weights = model_state(state)
    try:
        model.load_state_dict(weights)
    except RuntimeError:
        reasons = mismatch_reasons(state, cfg, classes, genotype)
        if not reasons:
            reasons = [weights_difference(model.state_dict(), weights)]
        raise CheckpointError(f"{source}: the weights do not fit the model of this config "
                              f"({'; '.join(reasons)}); use the config (and genotype) it was "
                              "trained with") from None


def mismatch_reasons(state: dict, cfg: CfgNode | None, classes: Sequence[str] | None,
                     genotype: str | None) -> list[str]:
    """What differs between the run that wrote checkpoint `state` and this one: the
    ARCHITECTURE_KEYS of its `cfg` dump, the number of `classes`, the `genotype` text."""
    reasons = []
    stored_cfg = _stored_cfg(state)
    if cfg is not None and stored_cfg is not None:
        for key in ARCHITECTURE_KEYS:
            theirs, ours = _lookup(stored_cfg, key), _lookup(cfg, key)
            if theirs is not None and ours is not None and _plain(theirs) != _plain(ours):
                reasons.append(f"{key} is {theirs} in the checkpoint, {ours} here")
    stored_classes = state.get("classes")
    if classes is not None and stored_classes is not None and (
            len(stored_classes) != len(classes)):
        reasons.append(f"{len(stored_classes)} classes in the checkpoint, {len(classes)} here")
    if genotype is not None:
        reasons += _genotype_difference(state.get("genotype", ""), genotype)
    return reasons


def _genotype_difference(stored: str, current: str) -> list[str]:
    """Why genotype text `stored` (the checkpoint's) and `current` build other towers, or []."""
    if not stored.strip() and not current.strip():
        return []
    if not current.strip():
        return ["the checkpoint has searched towers (it stores a genotype), this model plain "
                "ones"]
    if not stored.strip():
        return ["the checkpoint has plain towers, this model searched ones (a genotype)"]
    try:
        pairs = zip(("box", "cls"), parse_genotype_text(stored), parse_genotype_text(current))
        towers = [tower for tower, a, b in pairs if a != b]
    except GenotypeError:
        towers = [] if stored.split() == current.split() else ["box/cls"]
    return [f"the {' and '.join(towers)} tower genotype differs from the checkpoint's"] if (
        towers) else []


def weights_difference(expected: dict, given: dict) -> str:
    """Counts of the weights of `given` that are missing, unexpected or of another shape than
    in `expected` (a model's state dict), each with a first example."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [k for k in expected if k in given
              and getattr(expected[k], "shape", None) != getattr(given[k], "shape", None)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} weights missing from the checkpoint, e.g. {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} not in the model, e.g. {unexpected[0]}")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} of another shape, e.g. {k} "
                     f"{list(given[k].shape)} in the checkpoint, {list(expected[k].shape)} here")
    return "; ".join(parts) or "the weights do not load"


def _stored_cfg(state: dict) -> CfgNode | None:
    """The config dump a checkpoint of ours stores (`cfg`), or None."""
    text = state.get("cfg")
    if not isinstance(text, str):
        return None
    try:
        return CfgNode.load_cfg(text)
    except (yaml.YAMLError, ValueError, TypeError):
        return None


def _lookup(cfg: CfgNode, key: str):
    """The value of dotted `key` in `cfg`, or None when absent."""
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _plain(value):
    """Lists and tuples compare equal (a yaml dump turns tuples into lists)."""
    return tuple(value) if isinstance(value, (list, tuple)) else value


def model_state(state: dict) -> dict:
    """The model weights inside a checkpoint (ours: key `model`; else a bare state dict)."""
    return state.get("model", state)
