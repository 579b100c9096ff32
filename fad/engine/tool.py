"""The error path and parser of every command-line tool, without torch: a tool that needs no
model (fad-make-data) starts in a fraction of a second instead of paying torch's import.

    parser = tool_parser(__doc__)
    ...
    run_tool(main)         # FadError -> "error: ..." and exit 2; Ctrl-C -> exit 130
    run_command(main)      # the same, as a console command: a finished run exits at once

`fad.engine.launch` builds the config parsers and the set-up of the tools that run models on
these.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import os
import sys
import threading
from typing import Callable, NoReturn

from fad.errors import FadError

from .interrupt import Interrupted

EXIT_BAD_INPUT = 2
EXIT_SIGINT = 130  # 128 + SIGINT, as a shell reports a Ctrl-C


def tool_parser(description: str | None) -> argparse.ArgumentParser:
    """The parser every tool starts from: the module docstring as help, kept as written."""
    return argparse.ArgumentParser(description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    """`--verbose`: pycocotools' 12-line summary (and other debug lines) on the console too."""
    parser.add_argument("--verbose", action="store_true",
                        help="also print debug lines, e.g. pycocotools' full summary (log.txt "
                             "always has them)")


def error_line(exc: BaseException) -> str:
    """`error: <last line of the message>` (loader workers prepend their traceback)."""
    lines = str(exc).strip().splitlines()
    return f"error: {lines[-1] if lines else type(exc).__name__}"


def _log_to_files(line: str) -> None:
    """Append `line` to the log files of the "fad" logger (OUTPUT_DIR/log.txt) if it has any."""
    logger = logging.getLogger("fad")
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, line, None, None)
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def run_tool(main: Callable[[], object]) -> None:
    """Run a tool's `main`; bad input (any FadError) ends it with one line on stderr, also
    written to OUTPUT_DIR/log.txt once the logger is set up, and exit code 2. A run the trainer
    stopped on a signal (`Interrupted`, already logged with its checkpoint) exits 130 (SIGINT)
    or 143 (SIGTERM); a Ctrl-C elsewhere (loading data, evaluating) exits 130 with one line.
    However it ends, a process group the tool joined (torchrun) is left first."""
    try:
        main()
    except FadError as exc:
        line = error_line(exc)
        _log_to_files(line)
        print(line, file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except Interrupted as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        line = "interrupted (Ctrl-C)"
        _log_to_files(line)
        print(line, file=sys.stderr)
        sys.exit(EXIT_SIGINT)
    finally:
        with contextlib.suppress(Exception):  # never in place of the tool's own error
            leave_process_group()


def run_command(main: Callable[[], object]) -> NoReturn:
    """`run_tool(main)` as a console command (each tool's `run()`): a run that finishes ends
    the process with exit code 0 without the interpreter's finalization. Before that, what
    finalization does first still runs: non-daemon threads are joined (`threading._shutdown`),
    the exit handlers run (logging flushes and closes OUTPUT_DIR/log.txt, multiprocessing
    stops loader workers) and stdout / stderr are flushed. What is skipped is tearing down the
    modules of torch, torchvision and their dependencies, about 1 s a command (the files of a
    run are written and closed by then). Errors exit through `run_tool` as before."""
    run_tool(main)
    threading._shutdown()  # type: ignore[attr-defined]  # the interpreter's first exit step
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # e.g. a pipe the reader closed
            stream.flush()
    os._exit(0)


def leave_process_group() -> None:
    """Destroy the default torch.distributed process group if this process joined one: its
    backend's threads stop before the interpreter exits (a finished gloo rank that exits with
    them running can abort, and torchrun then counts a failed worker and restarts the group).
    Imports nothing: a tool that never loaded torch.distributed has no group."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
