"""Clean stops on Ctrl-C (SIGINT) and SIGTERM during training and search.

While a `StopRequest` is active (the trainer's loop), the first SIGINT or SIGTERM only records
the signal: the trainer finishes the current iteration, writes a checkpoint, logs
"interrupted at iteration N; continue with --resume" and raises `Interrupted`, which
`fad.engine.tool.run_tool` turns into exit code 128 + signal (130 for SIGINT, 143 for SIGTERM),
without a traceback. A second signal exits at once (no checkpoint). Under torchrun the trainer
takes the largest signal over all ranks every iteration, so every rank stops at the same one;
torchrun passes a Ctrl-C on to its workers, who also get it from the terminal, so there a repeat
within FORWARD_WINDOW_S seconds is the same stop, and the step plus the checkpoint must end within
torchrun's shutdown grace period (30 s by default) before it kills the workers.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from types import FrameType, TracebackType

logger = logging.getLogger("fad")

SIGNALS = (signal.SIGINT, signal.SIGTERM)
FORWARD_WINDOW_S = 2.0  # under torchrun: a repeat this soon is the agent forwarding the first


class Interrupted(Exception):
    """The run stopped on signal `signum` after a checkpoint at `iteration`."""

    def __init__(self, signum: int, iteration: int):
        super().__init__(f"interrupted at iteration {iteration}; continue with --resume")
        self.signum, self.iteration = signum, iteration

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process the signal ended."""
        return 128 + self.signum


class StopRequest:
    """Context manager that turns SIGINT/SIGTERM into a request to stop (`signum`, 0 = none).

    Handlers are installed only in the main thread (elsewhere `signum` stays 0) and the previous
    ones are restored on exit. Processes forked meanwhile (data loader workers, which get a
    terminal's Ctrl-C too) inherit the handler and ignore the signals: the main process stops them.
    """

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, object] = {}
        self._pid = os.getpid()
        self._first = 0.0

    def __enter__(self) -> StopRequest:
        self._pid = os.getpid()
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        """First signal: record it; second: leave at once with 128 + signum."""
        if os.getpid() != self._pid:
            return
        name = signal.Signals(signum).name
        now = time.monotonic()
        if self.signum and "TORCHELASTIC_RUN_ID" in os.environ and (
                now - self._first < FORWARD_WINDOW_S):
            return
        if self.signum:
            sys.stderr.write(f"{name} again: exiting now, without a checkpoint\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        self.signum, self._first = signum, now
        logger.warning("%s: stopping after this iteration with a checkpoint (send it again to "
                       "exit at once)", name)
