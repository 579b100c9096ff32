"""Iteration-based, resumable, aspect-ratio grouped batch sampling; ordered sharding for tests.

The training stream is a pure function of the seed: epoch e is a permutation drawn from
(seed, e), each rank takes every world_size-th index of it, and batches fill per aspect group.
Resuming at iteration k replays the index stream (cheap: no images are read) and starts
yielding at k, so batches and their augmentation seeds match an uninterrupted run.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from fad.errors import DataError


def mix_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from integers (e.g. seed, iteration, index)."""
    digest = hashlib.blake2b(":".join(str(int(v)) for v in values).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class TrainBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields batches of (dataset index, augmentation seed) for iterations start_iter..max_iter-1
    (forever when max_iter is None). `group_ids[i]` is image i's aspect group (all zeros = no
    grouping). The seed of a sample is mix_seed(seed, iteration, index)."""

    def __init__(self, group_ids: Sequence[int], batch_size: int, seed: int, start_iter: int = 0,
                 max_iter: int | None = None, rank: int = 0, world_size: int = 1):
        if len(group_ids) < world_size:
            raise DataError(f"the training set has {len(group_ids)} images, fewer than the "
                            f"{world_size} ranks; add images or run on fewer ranks")
        if batch_size <= 0:
            raise ValueError(f"TrainBatchSampler: batch_size must be >= 1, got {batch_size}")
        self.group_ids = list(group_ids)
        self.batch_size = batch_size
        self.seed = seed
        self.start_iter = start_iter
        self.max_iter = max_iter
        self.rank = rank
        self.world_size = world_size

    def _indices(self) -> Iterator[int]:
        epoch = 0
        while True:
            generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
            perm = torch.randperm(len(self.group_ids), generator=generator)
            yield from perm[self.rank::self.world_size].tolist()
            epoch += 1

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        if self.max_iter is not None and self.start_iter >= self.max_iter:
            return
        buffers: dict[int, list[int]] = {}
        iteration = 0
        for index in self._indices():
            buffer = buffers.setdefault(self.group_ids[index], [])
            buffer.append(index)
            if len(buffer) < self.batch_size:
                continue
            if iteration >= self.start_iter:
                yield [(i, mix_seed(self.seed, iteration, i)) for i in buffer]
            buffer.clear()
            iteration += 1
            if self.max_iter is not None and iteration >= self.max_iter:
                return

    def __len__(self) -> int:
        if self.max_iter is None:
            raise TypeError("an infinite TrainBatchSampler has no length")
        return max(0, self.max_iter - self.start_iter)


class ShardSampler(Sampler[int]):
    """Indices rank, rank + world_size, ... in order: each image exactly once over all ranks."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        self.size, self.rank, self.world_size = size, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))
