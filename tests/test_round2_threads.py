"""Threads re-checked at every log line (issue #23 item 11): a run switches to 1 thread when
other jobs load the machine after its start, and back to torch's default when they leave, one
log line per switch. The load is faked (os.getloadavg), never made."""
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO

from fad.engine.threads import ThreadChoice


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_recheck_switches_on_the_other_jobs_load(keep_threads):
    choice = ThreadChoice(requested=0, default=4, cores=4, local_ranks=1, threads=4)
    # the load counts this run's own 4 threads: 4.5 means other jobs use half a core
    assert choice.recheck(4.5) is None and choice.threads == 4
    line = choice.recheck(8.0)  # others 4.0 >= 4 cores
    assert choice.threads == torch.get_num_threads() == 1
    assert line.startswith("1 intra-op thread per process from now on: the machine got busy "
                           "(other jobs' load 4.0 on 4 cores)")
    assert choice.recheck(3.5) is None and choice.threads == 1  # others 2.5: not under half
    line = choice.recheck(2.5)  # others 1.5 < 2
    assert choice.threads == torch.get_num_threads() == 4
    assert "the machine is free again (other jobs' load 1.5 on 4 cores)" in line


@pytest.mark.parametrize("requested, ranks", [(3, 1), (0, 2)])
def test_recheck_keeps_a_fixed_choice(keep_threads, requested, ranks):
    """NUM_THREADS set, or 2 ranks x 4 threads > 4 cores (1 thread on an idle machine too)."""
    threads = requested or 1
    choice = ThreadChoice(requested=requested, default=4, cores=4, local_ranks=ranks,
                          threads=threads)
    for load in (50.0, 0.0):
        assert choice.recheck(load) is None and choice.threads == threads


FAKE_LOAD = """
import os, sys
cores = len(os.sched_getaffinity(0))
loads = [0.0, 2.0, 10.0 * cores, 10.0 * cores, 1.0]  # start-up, then after iterations 1..4
os.getloadavg = lambda: (loads.pop(0) if loads else 1.0, 0.0, 0.0)
from fad.cli.train import run
sys.argv = ["fad-train", *sys.argv[1:]]
run()
"""


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores for 2 threads")
def test_train_tool_switches_threads_when_load_arrives(synthetic_root, tmp_path):
    config = os.path.join(REPO, "configs", "fcos", "fcos_tiny_synthetic.yaml")
    env = dict(os.environ, OMP_NUM_THREADS="2")  # torch's default: 2 threads
    run = subprocess.run(
        [sys.executable, "-c", FAKE_LOAD, "--config-file", config, "DATASETS.ROOT",
         synthetic_root, "OUTPUT_DIR", str(tmp_path), "MODEL.DEVICE", "cpu",
         "MODEL.FPN.OUT_CHANNELS", "16", "MODEL.FCOS.NUM_CONVS", "1", "INPUT.MIN_SIZE_TRAIN",
         "(64,)", "INPUT.MAX_SIZE_TRAIN", "96", "SOLVER.IMS_PER_BATCH", "1", "SOLVER.MAX_ITER",
         "4", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "(3,)", "SOLVER.LOG_PERIOD", "1",
         "--skip-test"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [x.split("] ", 1)[1] for x in (tmp_path / "log.txt").read_text().splitlines()
             if "threads" in x]
    assert lines[0].startswith("threads: 2 intra-op threads per process (torch's default)")
    assert lines[1].startswith("threads after iteration 2: 1 intra-op thread per process from "
                               "now on: the machine got busy")
    assert lines[2].startswith("threads after iteration 4: 2 intra-op threads per process from "
                               "now on: the machine is free again")
    assert len(lines) == 3
