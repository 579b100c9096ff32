"""Intra-op threads of a run: chosen at start-up (`set_num_threads`, from `launch.setup`) and
re-checked at every log line (`recheck_threads`, from the trainer).

OpenMP threads that wait for a busy core make every step many times slower (one run went from
0.9 s to 26-33 s per iteration when other jobs arrived), so without NUM_THREADS a run takes 1
thread while the machine is oversubscribed and goes back to torch's default when it is not;
each switch is one log line. The 1-minute load average counts this run's own threads too: the
re-check subtracts them (threads x local ranks) to estimate the other jobs' load, switches to 1
thread once that reaches the cores and back once it falls under half of them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

HINT = "set NUM_THREADS N to choose"


def cpu_cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def load_average() -> float:
    """The 1-minute load average (0 where the platform has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def choose_num_threads(requested: int, default: int, cores: int, load: float,
                       local_ranks: int) -> tuple[int, str]:
    """(intra-op threads, the log line saying why) for one process.

    `requested` is NUM_THREADS (> 0 wins); otherwise torch's `default`, unless the machine is
    oversubscribed: the 1-minute `load` already reaches the `cores`, or `local_ranks` processes
    (torchrun's LOCAL_WORLD_SIZE) x `default` threads exceed them. Then 1.
    """
    if requested > 0:
        return requested, f"{requested} intra-op threads per process (NUM_THREADS)"
    if load >= cores:
        return 1, (f"1 intra-op thread per process: the machine is busy (load {load:.1f} on "
                   f"{cores} cores); {HINT}")
    if default * local_ranks > cores:
        return 1, (f"1 intra-op thread per process: {local_ranks} processes x {default} threads "
                   f"> {cores} cores; {HINT}")
    return default, (f"{default} intra-op threads per process (torch's default); {HINT} "
                     "(1 is much faster when other jobs keep the cores busy)")


@dataclass
class ThreadChoice:
    """The thread choice of this process: NUM_THREADS (`requested`), torch's `default`, the
    `cores`, the `local_ranks` and the `threads` in use."""

    requested: int
    default: int
    cores: int
    local_ranks: int
    threads: int

    def recheck(self, load: float) -> str | None:
        """Switch to 1 thread when the other jobs' load (`load` less this run's threads) reaches
        the cores, back to the idle-machine choice when it falls under half of them; returns
        the log line of a switch, None when the threads stay (always with NUM_THREADS set)."""
        idle, _ = choose_num_threads(self.requested, self.default, self.cores, 0.0,
                                     self.local_ranks)
        if self.requested > 0 or idle == 1:
            return None
        others = max(0.0, load - self.threads * self.local_ranks)
        if self.threads != 1 and others >= self.cores:
            self.threads = 1
            why = f"the machine got busy (other jobs' load {others:.1f} on {self.cores} cores)"
        elif self.threads == 1 and others < self.cores / 2:
            self.threads = idle
            why = f"the machine is free again (other jobs' load {others:.1f} on {self.cores} cores)"
        else:
            return None
        torch.set_num_threads(self.threads)
        plural = "s" if self.threads > 1 else ""
        return f"{self.threads} intra-op thread{plural} per process from now on: {why}; {HINT}"


_CHOICE: ThreadChoice | None = None


def set_num_threads(requested: int) -> str:
    """Choose and apply this process's threads (`choose_num_threads` on the current load) and
    keep the choice for `recheck_threads`; returns its log line."""
    global _CHOICE
    default, ranks = torch.get_num_threads(), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    threads, line = choose_num_threads(requested, default, cpu_cores(), load_average(), ranks)
    torch.set_num_threads(threads)
    _CHOICE = ThreadChoice(requested, default, cpu_cores(), ranks, threads)
    return line


def recheck_threads() -> str | None:
    """`ThreadChoice.recheck` on the current load; None when `set_num_threads` was not called
    (a trainer built outside the tools keeps its threads)."""
    return _CHOICE.recheck(load_average()) if _CHOICE is not None else None
