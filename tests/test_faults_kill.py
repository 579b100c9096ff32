"""kill -9 at any instant (issue #22 item 1), a few trials of scripts/fault_campaign.py (the
script runs the full count): the same command with --resume always starts, from the last
complete checkpoint, and finishes with weights (and genotype, for the search) bit-identical to
an uninterrupted run; the temporary file of a killed checkpoint write is removed on resume."""
import importlib.util
import os
import random
import sys

import pytest
from conftest import REPO

spec = importlib.util.spec_from_file_location(
    "fault_campaign", os.path.join(REPO, "scripts", "fault_campaign.py"))
campaign = importlib.util.module_from_spec(spec)
sys.modules["fault_campaign"] = campaign  # its dataclasses look their module up there
spec.loader.exec_module(campaign)


@pytest.fixture(scope="module")
def ctx(synthetic_root, tmp_path_factory):
    """The campaign's context on the session's synthetic data (references made once)."""
    return campaign.Context(synthetic_root, str(tmp_path_factory.mktemp("faults")))


def _check(trial, ctx, name: str) -> None:
    assert trial.survived, trial
    assert trial.identical, trial
    out = os.path.join(ctx.work, name)
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["bytes", "record", "pointer"])
def test_kill_inside_a_checkpoint_save_then_resume(ctx, where):
    """Killed half-way through the bytes of the 2nd checkpoint (iteration 4), after it before
    its record, after the record before the pointer: the resume starts from iteration 2."""
    name = f"save_{where}"
    trial = campaign.kill_in_save(ctx, "train", where, 2, name)
    _check(trial, ctx, name)
    assert trial.lost_steps == 2  # killed after iteration 4, resumed from 2
    assert trial.note == ("1 temporary file(s) of the killed write" if where == "bytes" else "")


@pytest.mark.slow
@pytest.mark.parametrize("tool, seed", [("train", 0), ("train", 1), ("search", 0)])
def test_kill_at_a_random_instant_then_resume(ctx, tool, seed):
    name = f"random_{tool}_{seed}"
    trial = campaign.kill_at_random(ctx, tool, 0, random.Random(seed), name)
    _check(trial, ctx, name)
    assert trial.lost_steps <= 2  # CHECKPOINT_PERIOD 2: at most the steps since the last one


@pytest.mark.slow
def test_kill_with_two_loader_workers_then_resume(ctx):
    """The campaign's `2 loader workers` row, one trial: the tool and its 2 DataLoader worker
    processes killed at once (SIGKILL of the process group) at a random instant after the
    start-up (the workers exist then), then --resume: finishes bit-identical to an
    uninterrupted run with 2 workers (seed 0's first instant is 85 % into the steps: a run
    faster than the reference ends first, and `kill_at_random` draws again)."""
    name = "random_train_workers"
    trial = campaign.kill_at_random(ctx, "train", 2, random.Random(0), name, after_startup=True)
    _check(trial, ctx, name)
    assert trial.lost_steps <= 2
    assert trial.note.startswith(("killed in the steps", "killed after the last step")), trial



@pytest.mark.slow
def test_an_instant_after_the_run_s_end_is_drawn_again(ctx):
    """The first instant lies after the run's end (nothing killed): the run starts again with
    the next instant, which kills it; the resume then finishes bit-identical."""
    class Instants:
        values = [1e6, 0.5]  # seconds: the whole run, then inside its start-up

        def uniform(self, low: float, high: float) -> float:
            return self.values.pop(0)

    instants = Instants()
    trial = campaign.kill_at_random(ctx, "train", 0, instants, "redrawn")
    assert instants.values == []
    assert trial.note.startswith("killed"), trial
    _check(trial, ctx, "redrawn")

def test_the_table_counts_survivors_and_identical_finishes():
    rows = [("kill", [campaign.Trial(True, 1, True), campaign.Trial(True, 2, False),
                      campaign.Trial(False, 5, False)])]
    assert campaign.table(rows).splitlines()[-1] == "| kill | 3 | 2 | 1.5 / 2 | 1 |"
