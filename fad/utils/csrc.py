"""Where the C++/CUDA sources are: `csrc/` of a source checkout, or `fad/_csrc` when installed."""
from __future__ import annotations

from pathlib import Path


def csrc_dir() -> Path:
    """The folder of the kernel sources (`common/`, `msda/`, `depthwise/`, `sparse_resnet/`)."""
    checkout = Path(__file__).resolve().parents[2] / "csrc"
    if checkout.is_dir():
        return checkout
    return Path(__file__).resolve().parents[1] / "_csrc"
