"""Where the C++/CUDA sources are: `csrc/` of a source checkout, or `fad/_csrc` when installed."""
from __future__ import annotations

from pathlib import Path


def csrc_dir() -> Path:
    """The folder holding `msda/` and `sparse_resnet/` kernel sources."""
    checkout = Path(__file__).resolve().parents[2] / "csrc"
    if checkout.is_dir():
        return checkout
    return Path(__file__).resolve().parents[1] / "_csrc"
