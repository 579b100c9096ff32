"""A run's OUTPUT_DIR: a finished (or interrupted) run is never overwritten by accident.

`fad-train` and `fad-search` refuse to start in a folder that holds checkpoints unless
`--resume` (continue that run) or `--overwrite` (delete that run's files, then start again) is
given. `--overwrite` deletes only the files our tools write there (RUN_FILES: checkpoints and
their size + hash records, `last_checkpoint`, `config.yaml` (`config_test.yaml` /
`config_demo.yaml` of fad-test / fad-demo), `log*.txt`, tensorboard event files under `tb/`, the
evaluation results under `inference/`, the search's genotype files, diagrams and pictures, and
leftover temporary files of atomic writes); anything else in the folder stays.
"""
from __future__ import annotations

import glob
import os

from fad.errors import ConfigError

from .checkpoint import PERIODIC

# Relative glob patterns of every file a train or search run writes in OUTPUT_DIR (`**` spans
# sub-folders). tests/test_overwrite.py checks that a real run leaves nothing else behind.
RUN_FILES = (
    "model_final.pth", "model_[0-9][0-9][0-9][0-9][0-9][0-9][0-9].pth", "last_checkpoint",
    "model_final.pth.sha256", "model_[0-9][0-9][0-9][0-9][0-9][0-9][0-9].pth.sha256",
    "config.yaml", "config_test.yaml", "config_demo.yaml", "log.txt", "log_rank*.txt", ".tmp-*",
    "genotype.log", "genotype_cost.json", "genotype_history.log", "alpha_history.json",
    "alphas.png", "winning_ops.png", "genotype_box.gv", "genotype_cls.gv",
    "genotype_box.png", "genotype_cls.png", "genotype_box.svg", "genotype_cls.svg",
    "tb/**/events.out.tfevents.*",
    "inference/*/coco_results.json", "inference/*/metrics.json", "inference/*/.tmp-*",
    "inference/*/voc_results/comp4_det_*.txt",
)
RUN_FOLDERS = ("tb", "inference")  # removed too once the deletion leaves them empty


def checkpoints_in(folder: str) -> list[str]:
    """Names of the checkpoints (and the `last_checkpoint` pointer) in `folder`, sorted."""
    if not os.path.isdir(folder):
        return []
    return sorted(n for n in os.listdir(folder)
                  if n in ("model_final.pth", "last_checkpoint") or PERIODIC.fullmatch(n))


def check_run_folder(folder: str, resume: bool, overwrite: bool) -> None:
    """A one-line ConfigError when `folder` holds checkpoints and neither `resume` nor
    `overwrite` says what to do with them."""
    found = [n for n in checkpoints_in(folder) if n != "last_checkpoint"]
    if found and not (resume or overwrite):
        more = f" and {len(found) - 1} more" if len(found) > 1 else ""
        raise ConfigError(f"OUTPUT_DIR {folder} holds the checkpoints of an earlier run "
                          f"({found[-1]}{more}); add --resume to continue it, --overwrite to "
                          "delete its files and start again, or give another OUTPUT_DIR")


def run_files(folder: str) -> list[str]:
    """Paths of the files of RUN_FILES that exist under `folder`."""
    found: set[str] = set()
    for pattern in RUN_FILES:
        found.update(p for p in glob.glob(os.path.join(glob.escape(folder), pattern),
                                          recursive=True) if os.path.isfile(p))
    return sorted(found)


def clear_run_files(folder: str) -> list[str]:
    """Delete the RUN_FILES of `folder` (then the RUN_FOLDERS left empty); returns the deleted
    files. Files we do not write stay, and so do the folders that hold them."""
    deleted = run_files(folder)
    for path in deleted:
        os.remove(path)
    for name in RUN_FOLDERS:
        for root, _, _ in os.walk(os.path.join(folder, name), topdown=False):
            if not os.listdir(root):
                os.rmdir(root)
    return deleted
