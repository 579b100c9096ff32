"""Datasets and loaders from the config: catalog names -> datasets -> iteration-based loaders."""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader
from yacs.config import CfgNode

from fad.config.catalog import resolve
from fad.errors import ConfigError
from fad.utils.dist import get_rank, get_world_size, synchronize

from .check import check_images
from .coco import COCODataset
from .samplers import ShardSampler, TrainBatchSampler
from .synthetic import ensure_synthetic
from .transforms import build_transforms, padded_train_size
from .views import DetectionConcat
from .voc import VOCDataset


def _ensure_synthetic_once(root: str) -> None:
    """Rank 0 generates first; the others follow after a barrier (a no-op on shared storage)."""
    if get_rank() == 0:
        ensure_synthetic(root)
    if get_world_size() > 1:
        synchronize()
        ensure_synthetic(root)


def build_dataset(cfg: CfgNode, names: Sequence[str], is_train: bool):
    """One dataset over the catalog `names` (a concatenation when several; they must share one
    class list). Synthetic names generate their data under DATASETS.ROOT when missing. Every
    image is checked when DATASETS.CHECK_IMAGES (`fad.data.check`; a DataError listing the bad
    files)."""
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ConfigError("no dataset names given; set DATASETS.TRAIN / DATASETS.TEST")
    transforms = build_transforms(cfg, is_train)
    datasets = []
    for name in names:
        entry = resolve(name, cfg)
        if entry["synthetic"]:
            _ensure_synthetic_once(cfg.DATASETS.ROOT)
        if entry["format"] == "voc":
            datasets.append(VOCDataset(entry["root"], entry["split"], transforms, is_train,
                                       classes=entry["classes"], name=name))
        else:
            datasets.append(COCODataset(entry["images"], entry["ann_file"], transforms, is_train,
                                        name=name))
        check_images(cfg, datasets[-1], name)
    return datasets[0] if len(datasets) == 1 else DetectionConcat(datasets)


def check_num_classes(cfg: CfgNode, dataset) -> int:
    """The class count of `dataset`; a ConfigError when MODEL.NUM_CLASSES (0 = take it from the
    data) names another count."""
    num_classes = dataset.num_classes
    if cfg.MODEL.NUM_CLASSES and cfg.MODEL.NUM_CLASSES != num_classes:
        raise ConfigError(f"MODEL.NUM_CLASSES {cfg.MODEL.NUM_CLASSES} but {cfg.DATASETS.TRAIN} "
                          f"has {num_classes} classes; set MODEL.NUM_CLASSES 0 to take it from "
                          "the data")
    return num_classes


def collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """[(image, target), ...] -> ([images], [targets]) (images keep their own sizes)."""
    return [image for image, _ in batch], [target for _, target in batch]


def _per_rank(total: int, key: str, world: int) -> int:
    """The share of each of `world` ranks of the batch `total` (config `key`); a ConfigError unless
    it is a positive multiple of `world`."""
    if total < 1:
        raise ConfigError(f"{key}: {total} must be positive; set {key} >= 1")
    if total % world:
        raise ConfigError(f"{key}: {total} images do not split over the {world} ranks; set {key} "
                          f"to a multiple of {world}")
    return total // world


def merge_small_groups(sizes: list[tuple[int, int]], least: int) -> list[tuple[int, int]]:
    """`sizes` (an (H, W) per image) with every size that fewer than `least` images share merged
    into the next larger one: sizes ordered portrait then landscape, each by area, and walked
    from the smallest, a group closes once it holds `least` images (the sizes it took in map
    to its largest); what is left at the end joins the last closed group. A group smaller than
    a batch would otherwise fill its batches with repeats of its few images, drawn over several
    epochs."""
    if not sizes:
        return []
    counts = Counter(sizes)
    order = sorted(counts, key=lambda s: (s[1] > s[0], s[0] * s[1], s))
    target: dict[tuple[int, int], tuple[int, int]] = {}
    pending: list[tuple[int, int]] = []
    held, last = 0, order[-1]  # last: the largest size of the last closed group
    for size in order:
        pending.append(size)
        held += counts[size]
        if held >= least:
            target.update((p, size) for p in pending)
            pending, held, last = [], 0, size
    target.update((p, last) for p in pending)
    return [target[s] for s in sizes]


def batch_groups(cfg: CfgNode, dataset) -> list[int]:
    """Each training image's batch group (a batch holds one group's images): its padded
    training size (`padded_train_size`) with DATALOADER.SIZE_GROUPING, so a batch pads no
    image beyond INPUT.SIZE_DIVISIBILITY, but for sizes with fewer images than a batch, which
    join the next (`merge_small_groups`); else portrait / landscape with
    DATALOADER.ASPECT_RATIO_GROUPING; else one group."""
    sizes = [dataset.image_size(i) for i in range(len(dataset))]
    if cfg.DATALOADER.SIZE_GROUPING:
        keys: list = merge_small_groups([padded_train_size(cfg, h, w) for h, w in sizes],
                                        cfg.SOLVER.IMS_PER_BATCH)
    elif cfg.DATALOADER.ASPECT_RATIO_GROUPING:
        keys = [w > h for h, w in sizes]
    else:
        keys = [0] * len(sizes)
    ids: dict = {}
    return [ids.setdefault(key, len(ids)) for key in keys]


def make_train_loader(cfg: CfgNode, dataset, start_iter: int = 0,
                      infinite: bool = False) -> DataLoader:
    """Batches ([images], [targets]) of SOLVER.IMS_PER_BATCH // world_size images for iterations
    start_iter..SOLVER.MAX_ITER-1 (forever if `infinite`), seeded by cfg.SEED, grouped by
    `batch_groups`, a disjoint shard per rank; resuming at `start_iter` gives exactly the batches
    of an uninterrupted run from there on."""
    rank, world = get_rank(), get_world_size()
    batch_size = _per_rank(cfg.SOLVER.IMS_PER_BATCH, "SOLVER.IMS_PER_BATCH", world)
    sampler = TrainBatchSampler(batch_groups(cfg, dataset), batch_size, cfg.SEED,
                                start_iter=start_iter,
                                max_iter=None if infinite else cfg.SOLVER.MAX_ITER,
                                rank=rank, world_size=world)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.DATALOADER.NUM_WORKERS,
                      collate_fn=collate)


def make_test_loader(cfg: CfgNode, dataset) -> DataLoader:
    """Ordered batches of TEST.IMS_PER_BATCH // world_size images; rank r gets images r, r + world,
    ... so each image is seen exactly once over all ranks."""
    rank, world = get_rank(), get_world_size()
    batch_size = _per_rank(cfg.TEST.IMS_PER_BATCH, "TEST.IMS_PER_BATCH", world)
    sampler = ShardSampler(len(dataset), rank, world)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                      num_workers=cfg.DATALOADER.NUM_WORKERS, collate_fn=collate)
