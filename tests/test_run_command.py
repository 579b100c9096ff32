"""`run_command` (each console tool's `run()`): a finished run exits 0 at once, after joining
its threads, running the exit handlers and flushing its output; errors exit as `run_tool`'s."""
import subprocess
import sys

SCRIPT = """
import atexit, logging, sys, threading, time
from fad.engine.tool import run_command
from fad.errors import ConfigError

def main():
    if sys.argv[1] == "bad":
        raise ConfigError("bad value")
    out = sys.argv[2]
    logging.basicConfig(filename=out + "/log.txt", level=logging.INFO)
    logging.getLogger("t").info("logged before the end")  # flushed by logging's exit handler
    atexit.register(lambda: open(out + "/atexit", "w").write("ran"))
    def late():
        time.sleep(0.3)
        open(out + "/thread", "w").write("done")
    threading.Thread(target=late).start()  # non-daemon: joined before the process ends
    sys.stdout.write("no newline at the end")  # buffered: flushed before the process ends

run_command(main)
print("never reached")
"""


def _run(*args):
    return subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True,
                          text=True, timeout=120)


def test_a_finished_command_exits_0_with_its_work_done(tmp_path):
    run = _run("ok", str(tmp_path))
    assert run.returncode == 0, run.stderr
    assert run.stdout == "no newline at the end"
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "thread").read_text() == "done"
    assert "logged before the end" in (tmp_path / "log.txt").read_text()


def test_a_failed_command_exits_as_run_tool_does(tmp_path):
    run = _run("bad", str(tmp_path))
    assert run.returncode == 2
    assert run.stderr.strip() == "error: bad value"
    assert "never reached" not in run.stdout
