"""What a run prints: log lines with the last interval's real time and loss (window median in
brackets) and an ETA at that speed; the thread choice in the first lines; pycocotools' block
only with --verbose (log.txt always has it); no tqdm bar when stderr is not a terminal."""
import logging

import pytest
import torch
from torch import nn

from fad.data.base import quiet_coco
from fad.engine import logger as logger_module
from fad.engine.inference import inference
from fad.engine.launch import default_argument_parser, parse_args
from fad.engine.logger import MetricLogger, setup_logger
from fad.engine.threads import choose_num_threads
from fad.evaluation import evaluate_coco


class Clock:
    """A settable time.time."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_log_line_reports_the_last_interval_and_an_eta_at_its_speed(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(logger_module.time, "time", clock)
    meters = MetricLogger(max_iter=10, window=20)
    for loss in (3.0, 2.0, 1.0):
        clock.now += 1.0
        meters.update(loss=loss)
        meters.tick()
    line = meters.format(2, lr=0.01)
    assert line.startswith("eta: 0:00:07  iter: 3/10  loss: 2.0000 (2.0000)  ")
    assert "time: 1.000s (1.000s)  lr: 0.010000" in line
    for _ in range(2):  # the machine slows down five times
        clock.now += 5.0
        meters.update(loss=10.0)
        meters.tick()
    line = meters.format(4, lr=0.01)
    # the interval's mean, the median of the window in brackets; ETA = 5 left x 5 s
    assert line.startswith("eta: 0:00:25  iter: 5/10  loss: 10.0000 (3.0000)  ")
    assert "time: 5.000s (1.000s)" in line


@pytest.mark.parametrize("requested, load, ranks, expected", [
    (3, 9.0, 1, (3, "(NUM_THREADS)")),
    (0, 0.5, 1, (4, "torch's default); set NUM_THREADS N")),
    (0, 4.2, 1, (1, "the machine is busy (load 4.2 on 4 cores); set NUM_THREADS N")),
    (0, 0.5, 2, (1, "2 processes x 4 threads > 4 cores; set NUM_THREADS N")),
])
def test_thread_choice(requested, load, ranks, expected):
    threads, line = choose_num_threads(requested, default=4, cores=4, load=load,
                                       local_ranks=ranks)
    assert threads == expected[0] and expected[1] in line


def test_verbose_flag_is_shared_and_debug_lines_always_reach_log_txt(tmp_path, capsys):
    parser = default_argument_parser("t")
    assert parse_args(parser, ["SEED", "1", "--verbose"]).verbose
    assert not parse_args(parser, []).verbose
    gt = quiet_coco({"images": [{"id": 1, "width": 100, "height": 100}],
                     "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                                      "bbox": [10, 10, 40, 40], "area": 1600}],
                     "categories": [{"id": 1, "name": "a"}]})
    result = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.9}]
    for verbose in (False, True):
        setup_logger(str(tmp_path / str(verbose)), verbose=verbose)
        assert evaluate_coco(gt, result)["AP"] == pytest.approx(100.0)
        printed = capsys.readouterr().out
        assert ("Average Precision" in printed) == verbose
        assert "Average Precision" in (tmp_path / str(verbose) / "log.txt").read_text()
    fad_logger = logging.getLogger("fad")  # leave the logger as other tests expect it
    fad_logger.handlers.clear()
    fad_logger.propagate = True


class Boxes(nn.Module):
    """A detector that finds nothing."""

    def forward(self, images):
        return [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                 "labels": torch.zeros(0, dtype=torch.int64)} for _ in images]


def test_no_progress_bar_when_stderr_is_not_a_terminal(capsys):
    loader = [([torch.zeros(3, 8, 8)], [{"image_id": i, "size": (8, 8), "orig_size": (8, 8)}])
              for i in range(3)]
    assert len(inference(Boxes(), loader, torch.device("cpu"))) == 3
    assert "it/s" not in capsys.readouterr().err
