"""The one place where the compute device is chosen."""
from __future__ import annotations

import os

import torch
from yacs.config import CfgNode

from fad.errors import ConfigError


def resolve_device(cfg: CfgNode) -> torch.device:
    """`MODEL.DEVICE`: "auto" picks this rank's GPU when CUDA is usable, else the CPU."""
    name = cfg.MODEL.DEVICE
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"MODEL.DEVICE {name!r} asked for CUDA but no GPU is usable; "
                          "use MODEL.DEVICE auto or cpu")
    return device
