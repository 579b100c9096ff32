"""Random disjoint train/val split of a dataset (the FAD search trains weights and alphas on
different halves)."""
from __future__ import annotations

import torch

from .samplers import mix_seed
from .views import DetectionSubset


def split_dataset(dataset, val_fraction: float,
                  seed: int) -> tuple[DetectionSubset, DetectionSubset]:
    """(train, val) subsets: a seeded shuffle, `val_fraction` of the images (rounded, at least
    one each side) go to val. Both keep `classes` / `num_classes`."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if len(dataset) < 2:
        raise ValueError(f"cannot split a dataset of {len(dataset)} image(s) in two")
    num_val = min(len(dataset) - 1, max(1, round(len(dataset) * val_fraction)))
    generator = torch.Generator().manual_seed(mix_seed(seed))
    perm = torch.randperm(len(dataset), generator=generator).tolist()
    train, val = sorted(perm[num_val:]), sorted(perm[:num_val])
    return DetectionSubset(dataset, train), DetectionSubset(dataset, val)
