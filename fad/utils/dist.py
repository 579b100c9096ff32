"""Rank, world size, a barrier and the mean over ranks: what library code (models, data) asks of
torch.distributed. All are no-ops in a single process; setting up the process group is
`fad.engine.distributed`'s job."""
from __future__ import annotations

import torch.distributed as dist
from torch import Tensor


def is_dist() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    """Number of processes (1 outside a process group)."""
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in a single process)."""
    return get_rank() == 0


def synchronize() -> None:
    """Barrier across ranks."""
    if get_world_size() > 1:
        dist.barrier()


def all_reduce_mean(t: Tensor) -> Tensor:
    """Mean of `t` (any shape) over ranks: a detached copy; `t` itself is untouched."""
    t = t.detach().clone()
    if get_world_size() > 1:
        dist.all_reduce(t)
        t /= get_world_size()
    return t
