"""Training targets of the set-prediction detectors (DETR family, ASAG): checked, then turned into
the normalised boxes their losses use."""
from __future__ import annotations

import torch
from torch import Tensor

from fad.errors import DataError

from .boxes import normalize_xyxy, values_like


def normalized_targets(targets: list[dict], sizes: list[tuple[int, int]], num_classes: int,
                       where: str) -> list[dict[str, Tensor]]:
    """`targets` (per image `boxes` [K, 4] xyxy pixels, `labels` [K] int64 0-based) of images of
    `sizes` (H, W) -> per image `labels` [K] and `boxes` [K, 4] cxcywh in [0, 1] fractions of
    the image. A target the losses cannot use is a one-line DataError starting with `where`."""
    if len(targets) != len(sizes):
        raise DataError(f"{where}: got {len(sizes)} images but {len(targets)} targets")
    for i, tgt in enumerate(targets):
        boxes, labels = tgt.get("boxes"), tgt.get("labels")
        if boxes is None or labels is None or boxes.dim() != 2 or boxes.shape[-1] != 4 \
                or labels.shape != boxes.shape[:1]:
            raise DataError(f"{where}: target {i} needs 'boxes' [K, 4] xyxy and 'labels' [K]")
    outside = [((t["labels"] < 0) | (t["labels"] >= num_classes)).any() for t in targets]
    if outside and torch.stack(outside).any():  # host sync: a one-line error for bad labels
        i = next(i for i, bad in enumerate(outside) if bad)
        raise DataError(f"{where}: target {i} has labels outside 0..{num_classes - 1}; "
                        "labels must be 0-based class indices of the training dataset")
    return [{"labels": t["labels"],
             "boxes": normalize_xyxy(t["boxes"], values_like([h, w], t["boxes"]))}
            for t, (h, w) in zip(targets, sizes)]
