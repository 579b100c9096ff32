"""Datasets (VOC, COCO, synthetic), transforms and iteration-based loaders.

The names below load their module (and torch) on first use, so `fad.data.synthetic` (numpy and
PIL only: fad-make-data) imports without torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from fad.errors import DataError

_MODULE_OF = {
    "DetectionDataset": "base", "build_dataset": "build", "check_num_classes": "build",
    "collate": "build", "make_test_loader": "build", "make_train_loader": "build",
    "COCODataset": "coco", "split_dataset": "split", "build_transforms": "transforms",
    "DetectionConcat": "views", "DetectionSubset": "views", "VOCDataset": "voc",
}

if TYPE_CHECKING:
    from .base import DetectionDataset
    from .build import (
        build_dataset,
        check_num_classes,
        collate,
        make_test_loader,
        make_train_loader,
    )
    from .coco import COCODataset
    from .split import split_dataset
    from .transforms import build_transforms
    from .views import DetectionConcat, DetectionSubset
    from .voc import VOCDataset


def __getattr__(name: str) -> object:
    """`fad.data.<name>` of `__all__` from its module, imported now (PEP 562)."""
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)


__all__ = [
    "COCODataset", "DataError", "DetectionConcat", "DetectionDataset", "DetectionSubset",
    "VOCDataset", "build_dataset", "build_transforms", "check_num_classes", "collate",
    "make_test_loader", "make_train_loader", "split_dataset",
]
