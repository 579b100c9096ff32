"""torch.distributed helpers for torchrun (DDP); all are no-ops in a single process."""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from torch import Tensor


def is_dist() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def init_distributed() -> bool:
    """Join the process group torchrun describes (nccl on CUDA, gloo on CPU); False if none."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_dist():
        return is_dist()
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    return True


def synchronize() -> None:
    """Barrier across ranks."""
    if is_dist() and get_world_size() > 1:
        dist.barrier()


def all_reduce_mean(t: Tensor) -> Tensor:
    """Mean of `t` over ranks (a detached copy; `t` itself is untouched)."""
    t = t.detach().clone()
    if is_dist() and get_world_size() > 1:
        dist.all_reduce(t)
        t /= get_world_size()
    return t


def reduce_dict(d: dict[str, Tensor]) -> dict[str, Tensor]:
    """Mean over ranks of every scalar tensor in `d` (detached), keys in a fixed order."""
    if not (is_dist() and get_world_size() > 1):
        return {k: v.detach() for k, v in d.items()}
    keys = sorted(d)
    stacked = all_reduce_mean(torch.stack([d[k].detach().float().reshape(()) for k in keys]))
    return dict(zip(keys, stacked))


def broadcast_tensors(tensors: list[Tensor], src: int = 0) -> None:
    """Copy `tensors` from rank `src` to every rank, in place."""
    if is_dist() and get_world_size() > 1:
        for t in tensors:
            dist.broadcast(t.data, src)


def all_gather_objects(obj) -> list:
    """Gather a picklable object from every rank (a one-element list outside DDP)."""
    if not (is_dist() and get_world_size() > 1):
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out
