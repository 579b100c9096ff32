"""torch.distributed for torchrun (DDP): joining the process group, reductions and broadcasts;
all are no-ops in a single process. Rank, world size, the barrier and the mean over ranks live
in `fad.utils.dist` (models and data use them too) and are re-exported here for the engine."""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.rendezvous import rendezvous

from fad.utils.dist import (
    all_reduce_mean,
    get_rank,
    get_world_size,
    is_dist,
    is_main_process,
    synchronize,
)

__all__ = ["all_gather_objects", "all_reduce_mean", "broadcast_tensors", "elastic_restart",
           "get_rank", "get_world_size", "init_distributed", "is_dist", "is_main_process",
           "max_over_ranks", "reduce_dict", "synchronize"]


def elastic_restart() -> int:
    """How many times torchrun's agent has restarted this worker group (TORCHELASTIC_RESTART_COUNT;
    0 on the first start and outside torchrun). A restart (> 0) is a resume of the same run."""
    try:
        return max(0, int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")))
    except ValueError:
        return 0


def init_distributed() -> bool:
    """Join the process group torchrun describes (nccl on CUDA, gloo on CPU); False if none."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_dist():
        return is_dist()
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    timeout = datetime.timedelta(minutes=30)
    store, rank, world_size = next(rendezvous("env://", timeout=timeout))
    if int(os.environ.get("GROUP_WORLD_SIZE", "1")) == 1:
        # One torchrun agent keeps one store for all restarts of its group: the addresses a dead
        # attempt published are still in it, and a restarted rank reading one connects to a dead
        # peer (refused, or a hang when its port was reused). Each restart gets its own keys.
        # Several agents may count restarts differently, so they share the keys (torch's rule).
        store = dist.PrefixStore(f"fad/restart_{elastic_restart()}", store)
    dist.init_process_group("nccl" if use_cuda else "gloo", store=store, rank=rank,
                            world_size=world_size, timeout=timeout)
    return True


def reduce_dict(d: dict[str, Tensor]) -> dict[str, Tensor]:
    """Mean over ranks of every scalar tensor in `d` (detached), keys in a fixed order."""
    if get_world_size() == 1:
        return {k: v.detach() for k, v in d.items()}
    keys = sorted(d)
    stacked = all_reduce_mean(torch.stack([d[k].detach().float().reshape(()) for k in keys]))
    return dict(zip(keys, stacked))


def max_over_ranks(value: int, device: torch.device) -> int:
    """The largest `value` over all ranks (one tiny all-reduce on `device`); `value` alone
    outside DDP."""
    if get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())  # host sync: all ranks stop at the same iteration


def broadcast_tensors(tensors: list[Tensor], src: int = 0) -> None:
    """Copy `tensors` from rank `src` to every rank, in place."""
    if get_world_size() > 1:
        for t in tensors:
            dist.broadcast(t.data, src)


def all_gather_objects(obj) -> list:
    """Gather a picklable object from every rank (a one-element list outside DDP)."""
    if get_world_size() == 1:
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out
