"""Atomic checkpoints with a `last_checkpoint` pointer for `--resume`."""
from __future__ import annotations

import os

import torch
from torch import nn

from fad.errors import CheckpointError
from fad.utils.io import atomic_torch_save, atomic_write_text


class Checkpointer:
    """Writes `output_dir/<name>.pth` atomically and records it in `output_dir/last_checkpoint`."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir

    def save(self, name: str, state: dict) -> str:
        path = os.path.join(self.output_dir, f"{name}.pth")
        atomic_torch_save(state, path)
        atomic_write_text(os.path.join(self.output_dir, "last_checkpoint"), os.path.basename(path))
        return path

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


def load_model_weights(model: nn.Module, state: dict, source: str) -> None:
    """Load the weights of checkpoint `state` (read from `source`) into `model`; weights that do
    not fit are a one-line CheckpointError."""
    try:
        model.load_state_dict(model_state(state))
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise CheckpointError(f"{source}: the weights do not fit the model of this config "
                              f"({detail[:300]}); use the config (and genotype) it was trained "
                              "with") from None


def model_state(state: dict) -> dict:
    """The model weights inside a checkpoint (ours: key `model`; else a bare state dict)."""
    return state.get("model", state)
