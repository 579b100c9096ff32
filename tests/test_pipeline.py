"""fad.cli.pipeline: tools run as forked (or, FAD_PIPELINE_FORK=0, spawned) child processes of one
driver: exit codes, logs, a failing stage never running on in the parent's code, SIGTERM passed
on, Ctrl-C waited out, the running stages stopped when one fails; scripts/demo.py's stages.

Each case runs a small driver script in its own interpreter (forking pytest's worker, which has
threads, is not what the demo does)."""
from __future__ import annotations

import importlib
import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fad.cli.pipeline import tool
from fad.errors import FadError

REPO = Path(__file__).resolve().parents[1]

TARGETS = '''
import os, sys, time
from fad.engine.tool import run_tool

def echo():
    print("argv", " ".join(sys.argv), "pid", os.getpid(), flush=True)

def boom():
    raise RuntimeError("boom in the stage")

def exits_3():
    sys.exit(3)

def shrugs():
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    open(sys.argv[1], "w").close()  # started
    time.sleep(1)

def sleepy():
    def body():
        open(sys.argv[1], "w").close()  # started
        time.sleep(60)
    run_tool(body)  # Ctrl-C -> exit 130, as every fad tool
'''


def run_driver(tmp_path: Path, body: str, fork: bool = True, wait: bool = True):
    """Run `body` (after `from fad.cli.pipeline import *`) in a new interpreter whose path holds
    the targets module `targets`; the CompletedProcess, or the Popen when not `wait`."""
    (tmp_path / "targets.py").write_text(TARGETS)
    driver = tmp_path / "driver.py"
    # SIGINT handled as in a terminal's foreground job, even where the test runner inherited it
    # ignored (a job started in the background by a non-interactive shell)
    driver.write_text("import os, signal, sys\n"
                      "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
                      "from fad.cli.pipeline import Command, check, preload, start, tool\n"
                      "print('driver', os.getpid(), flush=True)\n" + textwrap.dedent(body))
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               FAD_PIPELINE_FORK="1" if fork else "0")
    cmd = [sys.executable, str(driver)]
    if not wait:
        return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_tool_finds_the_console_command():
    stage = tool("fad-make-data", "--out", "a b")
    assert stage.target == "fad.cli.make_data:run"
    assert stage.args == ("--out", "a b")
    assert stage.name.endswith("fad-make-data")
    assert stage.line().endswith("fad-make-data --out 'a b'")
    with pytest.raises(FadError, match="no such console command"):
        tool("fad-nonesuch")


@pytest.mark.parametrize("fork", [True, False], ids=["fork", "spawn"])
def test_stages_run_with_their_argv_codes_and_logs(tmp_path, fork):
    """A stage sees its own command line, runs in its own process (forked: the driver's pid is
    not its own), writes its log; exit codes pass through (a tool's bad input: 2; an exception:
    1 with its traceback; sys.exit(3): 3), and the driver goes on after each."""
    result = run_driver(tmp_path, """
        child = start(Command("my-echo", "targets:echo", ("x", "y z")), log="echo.log")
        print("echo", child.wait(), flush=True)
        preload(tool("fad-visualize"))
        print("preloaded", "fad.cli.visualize" in sys.modules, flush=True)
        data = start(tool("fad-make-data", "--out", "data", "--num-train", "2", "--num-val", "1"))
        print("data", data.wait(), flush=True)
        bad = start(tool("fad-make-data", "--out", "data", "--num-train", "-1"), log="bad.log")
        print("bad", bad.wait(), flush=True)
        missing = start(tool("fad-visualize", "nonesuch.log", "--out", "d"), log="missing.log")
        print("missing", missing.wait(), flush=True)
        print("boom", start(Command("b", "targets:boom"), log="boom.log").wait(), flush=True)
        print("three", start(Command("t", "targets:exits_3")).wait(), flush=True)
        print("driver still here", flush=True)
    """, fork=fork)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    driver_pid = out.split()[1]
    for line in ("echo 0", f"preloaded {fork}", "data 0", "bad 2", "missing 2", "boom 1", "three 3",
                 "driver still here"):
        assert line in out.splitlines(), out
    assert out.count("driver still here") == 1  # no child ran on into the driver's code
    assert "$ my-echo x 'y z' > echo.log 2>&1" in out
    echo = (tmp_path / "echo.log").read_text().split()
    assert echo[:4] == ["argv", "my-echo", "x", "y"] and echo[4] == "z"
    assert echo[-1] != driver_pid
    assert "wrote 2 train + 1 val images" in out
    assert (tmp_path / "data/synthetic_coco/annotations").is_dir()
    assert "--num-train and --num-val must be >= 0" in (tmp_path / "bad.log").read_text()
    assert (tmp_path / "missing.log").read_text().startswith("error: ")
    assert "RuntimeError: boom in the stage" in (tmp_path / "boom.log").read_text()


def wait_for(path: Path, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_to_the_driver_reaches_the_stage(tmp_path):
    """SIGTERM to the driver goes on to the running stage, which ends (143); the driver's
    `check` then leaves with that code."""
    proc = run_driver(tmp_path, """
        child = start(Command("sleepy", "targets:sleepy", ("started",)))
        print("pid", child.pid, flush=True)
        check(child.wait())
        print("not reached", flush=True)
    """, wait=False)
    wait_for(tmp_path / "started")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, (out, err)
    assert "not reached" not in out
    assert not alive(int(out.split("pid ")[1].split()[0]))


def test_ctrl_c_is_waited_out(tmp_path):
    """A Ctrl-C (SIGINT to the whole process group) ends the stage its own way (a fad tool:
    130); the driver keeps waiting for it rather than dying first, then leaves with 130."""
    proc = run_driver(tmp_path, """
        child = start(Command("sleepy", "targets:sleepy", ("started",)))
        code = child.wait()
        print("stage ended", code, flush=True)
        check(code)
    """, wait=False)
    wait_for(tmp_path / "started")
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert "stage ended 130" in out, (out, err)
    assert proc.returncode == 130


def test_ctrl_c_stops_the_pipeline_even_when_the_command_ends_well(tmp_path):
    """A command that ignores the Ctrl-C and ends with 0: the driver's next `check` still
    leaves (130) instead of starting the next command."""
    proc = run_driver(tmp_path, """
        code = start(Command("shrugs", "targets:shrugs", ("started",))).wait()
        print("stage ended", code, flush=True)
        check(code)
        print("not reached", flush=True)
    """, wait=False)
    wait_for(tmp_path / "started")
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert "stage ended 0" in out, (out, err)
    assert "not reached" not in out
    assert proc.returncode == 130


def test_a_failed_stage_stops_the_ones_running(tmp_path):
    """`check` of a failed stage's code sends SIGTERM to the stages still running in the
    background, waits for them, then leaves with the failed stage's code."""
    result = run_driver(tmp_path, """
        import time
        background = start(Command("sleepy", "targets:sleepy", ("started",)))
        print("pid", background.pid, flush=True)
        while not os.path.exists("started"):
            time.sleep(0.05)
        check(start(Command("t", "targets:exits_3")).wait())
        print("not reached", flush=True)
    """)
    assert result.returncode == 3, result.stderr
    assert "not reached" not in result.stdout
    assert not alive(int(result.stdout.split("pid ")[1].split()[0]))


def test_demo_stages_resolve_and_dry_run_lists_them(tmp_path):
    """scripts/demo.py --dry-run prints each stage as a shell command; every stage's target
    function exists."""
    result = subprocess.run([sys.executable, "scripts/demo.py", "--dry-run"], cwd=REPO,
                            env=dict(os.environ, OUT=str(tmp_path / "demo")),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0].rsplit("/", 1)[-1] for line in lines] == [
        "python", "fad-make-data", "fad-search", "fad-visualize", "fad-train", "fad-demo"]
    assert f"OUTPUT_DIR {tmp_path}/demo/search" in lines[2]
    assert "--genotype-file" in lines[4] and "model_final.pth" in lines[5]
    spec = importlib.util.spec_from_file_location("demo_script", REPO / "scripts/demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    for stage in demo.stages(str(tmp_path)).values():
        module, function = stage.target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), stage
