"""Several commands (fad tools) run one after another, or side by side, from one Python process,
each in a child process of its own forked from this one: torch, torchvision and fad are imported
once instead of once per tool (~4 s each on a 2-core CPU), and each command still starts from a
clean process state, exits with its own code and can be stopped on its own, as from a shell.

    data = start(tool("fad-make-data", "--out", "datasets"))
    kernels = start(Command("python -m fad.ops", "fad.ops.__main__:main"), log=os.devnull)
    check(data.wait())
    check(start(tool("fad-search", "--config-file", cfg)).wait())

The parent imports a command's module before forking it (the first run of each tool pays the
import) and runs no torch op itself: a child forked after the parent used OpenMP threads could
hang. Where `os.fork` is missing, or FAD_PIPELINE_FORK=0, each command runs as
`python -c "from <module> import <function>; <function>()" ARGS...` instead (argv[0] its name;
same behaviour, the imports paid each time). A Ctrl-C reaches the running commands themselves
(one process group): the parent only notes it and keeps waiting for them (a trainer saves a
checkpoint first), and the next `check` stops the pipeline (130); a SIGTERM sent to the parent is
passed on to them.
"""
from __future__ import annotations

import atexit
import contextlib
import importlib
import importlib.metadata
import os
import shlex
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from fad.engine.tool import EXIT_SIGINT
from fad.errors import FadError

_running: set[int] = set()  # the pids of the commands started and not yet waited for


@dataclass(frozen=True)
class Command:
    """One run of a command: `name` (what a user would type, e.g. `fad-search`), the `target`
    function ("module:function") that runs it reading its arguments from sys.argv, and its
    `args`."""

    name: str
    target: str
    args: tuple[str, ...] = ()

    def line(self) -> str:
        """The command as one shell command line (to copy, or to print before it runs)."""
        return " ".join([self.name, *map(shlex.quote, self.args)])

    def resolve(self) -> Callable[[], object]:
        """The `target` function, its module imported into this process."""
        module, function = self.target.split(":")
        return getattr(importlib.import_module(module), function)


def tool(command: str, *args: str) -> Command:
    """The run of console command `command` (an entry point of the installed fad, e.g.
    `fad-train`) with `args`; shown as the script's path when it lies next to this Python
    under the current folder (`.venv/bin/fad-train`: it runs without activating the venv)."""
    found = importlib.metadata.entry_points(group="console_scripts", name=command)
    if not found:
        raise FadError(f"{command}: no such console command of the installed fad; reinstall it "
                       "(pip install -e .) or use one of the fad-* commands")
    script = Path(sys.executable).with_name(command)
    here = Path.cwd()
    shown = str(script.relative_to(here)) if script.is_relative_to(here) and script.exists() \
        else command
    return Command(shown, next(iter(found)).value, tuple(args))


def fork_enabled() -> bool:
    """Whether commands are forked (else started as new interpreters): where os.fork exists and
    FAD_PIPELINE_FORK is not 0."""
    return hasattr(os, "fork") and os.environ.get("FAD_PIPELINE_FORK", "1") != "0"


class Child:
    """A started command: `wait()` returns its exit code (128 + N when signal N ended it)."""

    def __init__(self, command: Command, log: str | None = None):
        self.command = command
        self._popen: subprocess.Popen | None = None
        self._code: int | None = None
        if fork_enabled():
            main = command.resolve()
            for stream in (sys.stdout, sys.stderr):
                stream.flush()  # else the child writes the parent's buffered text again
            self.pid = os.fork()
            if self.pid == 0:
                _run_child(command, main, log)
        else:
            module, function = command.target.split(":")
            code = (f"import sys; sys.argv[0] = {command.name!r}; "
                    f"from {module} import {function}; {function}()")
            out = open(log, "ab") if log else None  # noqa: SIM115  (the child holds it)
            try:
                self._popen = subprocess.Popen([sys.executable, "-c", code, *command.args],
                                               stdout=out, stderr=out)
            finally:
                if out is not None:
                    out.close()
            self.pid = self._popen.pid
        _running.add(self.pid)

    def wait(self) -> int:
        """Block until the command ends and return its exit code. A Ctrl-C meanwhile does not
        stop the waiting (the command received it too and ends its own way); it is noted, and
        the next `check` leaves even when the command ended with 0."""
        if self._code is None:
            with _ctrl_c_noted():
                if self._popen is not None:
                    self._code = _exit_code(self._popen.wait())
                else:
                    status = os.waitpid(self.pid, 0)[1]  # retried after a signal (PEP 475)
                    self._code = _exit_code(os.waitstatus_to_exitcode(status))
            _running.discard(self.pid)
        return self._code


_ctrl_c = threading.Event()  # a Ctrl-C came while this process waited for a command


def _note_ctrl_c(signum: int, frame) -> None:
    """The SIGINT handler while waiting: note it, raise nothing."""
    _ctrl_c.set()


@contextlib.contextmanager
def _ctrl_c_noted() -> Iterator[None]:
    """SIGINT only noted inside the block (on the main thread, where handlers are set): no
    KeyboardInterrupt can land between a child's end and its exit code being kept."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _note_ctrl_c)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _exit_code(returncode: int) -> int:
    """A return code (-N: killed by signal N) as a shell reports it (128 + N)."""
    return returncode if returncode >= 0 else 128 - returncode


def preload(*commands: Command) -> None:
    """Import the modules of `commands` now, e.g. while an earlier command runs, so that their
    start later pays no import (a no-op where commands are not forked)."""
    if fork_enabled():
        for command in commands:
            command.resolve()


def start(command: Command, log: str | None = None, echo: bool = True) -> Child:
    """Start `command` and return at once; its output goes to file `log` (appended) when given,
    else to this process's stdout / stderr. With `echo` its command line is printed first."""
    if echo:
        print(f"$ {command.line()}" + (f" > {log} 2>&1" if log else ""), flush=True)
    signal.signal(signal.SIGTERM, _pass_on_sigterm)
    return Child(command, log)


def check(code: int) -> None:
    """Leave this process with `code` when it is not 0 (a command failed or was stopped), or
    with 130 after a Ctrl-C that came while waiting: the commands still running are sent
    SIGTERM and waited for first."""
    if code == 0 and not _ctrl_c.is_set():
        return
    code = code or EXIT_SIGINT
    for pid in list(_running):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for pid in list(_running):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    sys.exit(code)


def _pass_on_sigterm(signum: int, frame) -> None:
    """The parent's SIGTERM handler: every running command gets it (and ends as it would
    alone)."""
    for pid in list(_running):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def _run_child(command: Command, main: Callable[[], object], log: str | None) -> None:
    """The forked child: run `main` as `command` (sys.argv = its command line), then
    leave with its exit code. Never returns into the parent's code, whatever `main` raises."""
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's pass-on handler
        _running.clear()
        if log:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
        sys.argv = [command.name, *command.args]
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()  # as the interpreter's exit would: logs flushed and closed
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):
                stream.flush()
        os._exit(code)
