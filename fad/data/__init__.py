"""Datasets (VOC, COCO, synthetic), transforms and iteration-based loaders."""
from fad.errors import DataError

from .base import DetectionDataset
from .build import build_dataset, check_num_classes, collate, make_test_loader, make_train_loader
from .coco import COCODataset
from .split import split_dataset
from .transforms import build_transforms
from .views import DetectionConcat, DetectionSubset
from .voc import VOCDataset

__all__ = [
    "COCODataset", "DataError", "DetectionConcat", "DetectionDataset", "DetectionSubset",
    "VOCDataset", "build_dataset", "build_transforms", "check_num_classes", "collate",
    "make_test_loader", "make_train_loader", "split_dataset",
]
