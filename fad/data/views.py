"""Subsets and concatenations of detection datasets that keep classes and the COCO ground truth."""
from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from fad.errors import DataError

from .base import CachedCocoGT, SampleKey, quiet_coco, unpack_key


class DatasetView(CachedCocoGT, Dataset):
    """Common part of subsets and concats: class list, cached ground truth, sample keys."""

    def __init__(self, classes: list[str], label_to_category_id: dict[int, int], is_train: bool):
        self.classes = list(classes)
        self.label_to_category_id = dict(label_to_category_id)
        self.is_train = is_train
        self._coco: COCO | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class DetectionSubset(DatasetView):
    """The images `indices` of `dataset`, with the parent's image ids."""

    def __init__(self, dataset, indices: Sequence[int]):
        super().__init__(dataset.classes, dataset.label_to_category_id, dataset.is_train)
        self.dataset = dataset
        self.indices = [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def image_size(self, index: int) -> tuple[int, int]:
        return self.dataset.image_size(self.indices[index])

    def image_id(self, index: int) -> int:
        return self.dataset.image_id(self.indices[index])

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, dict]:
        index, seed = unpack_key(key)
        parent = self.indices[index]
        return self.dataset[(parent, seed) if seed is not None else parent]

    def _build_coco_gt(self) -> COCO:
        gt = self.dataset.coco_gt().dataset
        ids = {self.image_id(i) for i in range(len(self))}
        return quiet_coco({"images": [im for im in gt["images"] if im["id"] in ids],
                           "annotations": [a for a in gt["annotations"] if a["image_id"] in ids],
                           "categories": gt["categories"]})


class DetectionConcat(DatasetView):
    """Several datasets with one class list, one after another. Image ids become positions in
    the concatenation (so ids from different parts cannot clash)."""

    def __init__(self, datasets: Sequence):
        first = datasets[0]
        for other in datasets[1:]:
            if list(other.classes) != list(first.classes):
                raise DataError(f"datasets {getattr(first, 'name', '?')} and "
                                f"{getattr(other, 'name', '?')} have different class lists "
                                f"({first.classes} vs {other.classes}); concatenate only datasets "
                                "with the same classes in the same order")
        super().__init__(first.classes, first.label_to_category_id, first.is_train)
        self.datasets = list(datasets)
        self.offsets = [0]
        for d in self.datasets:
            self.offsets.append(self.offsets[-1] + len(d))
        self.name = "+".join(getattr(d, "name", "?") for d in self.datasets)

    def __len__(self) -> int:
        return self.offsets[-1]

    def _locate(self, index: int) -> tuple[object, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        part = bisect.bisect_right(self.offsets, index) - 1
        return self.datasets[part], index - self.offsets[part]

    def image_size(self, index: int) -> tuple[int, int]:
        dataset, local = self._locate(index)
        return dataset.image_size(local)

    def image_id(self, index: int) -> int:
        return index

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, dict]:
        index, seed = unpack_key(key)
        dataset, local = self._locate(index)
        image, target = dataset[(local, seed) if seed is not None else local]
        target["image_id"] = index
        return image, target

    def _build_coco_gt(self) -> COCO:
        """Parts' ground truths merged: image ids -> positions, categories -> the first part's."""
        images, annotations = [], []
        for dataset, offset in zip(self.datasets, self.offsets):
            gt = dataset.coco_gt().dataset
            new_id = {dataset.image_id(i): offset + i for i in range(len(dataset))}
            cat_map = {cat: self.label_to_category_id[label]
                       for label, cat in dataset.label_to_category_id.items()}
            images += [{**im, "id": new_id[im["id"]]} for im in gt["images"] if im["id"] in new_id]
            for ann in gt["annotations"]:
                if ann["image_id"] in new_id:
                    annotations.append({**ann, "id": len(annotations) + 1,
                                        "image_id": new_id[ann["image_id"]],
                                        "category_id": cat_map[ann["category_id"]]})
        return quiet_coco({"images": images, "annotations": annotations,
                           "categories": self.datasets[0].coco_gt().dataset["categories"]})
