"""Atomic checkpoints with a `last_checkpoint` pointer for `--resume`, retention of periodic
checkpoints, and weights loading that says why a checkpoint does not fit the model."""
from __future__ import annotations

import os
import re
from collections.abc import Sequence

import torch
from torch import nn
from yacs.config import CfgNode

from fad.errors import CheckpointError
from fad.utils.io import atomic_torch_save, atomic_write_text

from .mismatch import (
    GENOTYPE_SOURCE,
    Builder,
    mismatch_line,
    mismatch_reasons,
    weights_difference,
)

PERIODIC = re.compile(r"model_\d{7}\.pth")  # the trainer's periodic/interrupt checkpoints


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
                       classes: Sequence[str] | None = None, genotype: str | None = None,
                       build: Builder | None = None,
                       genotype_source: str = GENOTYPE_SOURCE) -> None:
    """Load the weights of checkpoint `state` (read from `source`) into `model`.

    Weights that do not fit are a one-line CheckpointError saying why, decisive difference
    first (`fad.engine.mismatch`): what the checkpoint stores (its `cfg` dump, `classes`,
    `genotype`) compared with the current `cfg` (through `build`, the builder of `model`;
    default: the detector of MODEL.META_ARCHITECTURE), `classes` and `genotype` (from
    `genotype_source`), each compared when given; else which weights are missing, unexpected
    or of another shape.
    """
    weights = model_state(state)
    try:
        model.load_state_dict(weights)
    except RuntimeError:
        reasons = mismatch_reasons(state, model, cfg, classes, genotype, build, genotype_source)
        if not reasons:
            reasons = [weights_difference(model.state_dict(), weights)]
        raise CheckpointError(mismatch_line(source, reasons)) from None


def model_state(state: dict) -> dict:
    """The model weights inside a checkpoint (ours: key `model`; else a bare state dict)."""
    return state.get("model", state)
