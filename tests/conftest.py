"""Shared fixtures: a small synthetic dataset made once per test session, tiny configs."""
import os
import subprocess
import sys

import pytest
import torch

from fad.config import get_cfg_defaults

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

torch.set_num_threads(1)  # tiny tests: threads cost more than they save


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> str:
    """DATASETS.ROOT holding synthetic_voc/ and synthetic_coco/ (24 train, 8 val images)."""
    root = str(tmp_path_factory.mktemp("datasets"))
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "make_synthetic_data.py"),
                    "--out", root, "--num-train", "24", "--num-val", "8", "--seed", "0"],
                   check=True, capture_output=True)
    return root


def tiny_fcos_cfg(root: str, out: str):
    """A tiny CPU FCOS config on the synthetic COCO-format data under `root`."""
    cfg = get_cfg_defaults()
    cfg.merge_from_file(os.path.join(REPO, "configs", "fcos", "fcos_tiny_synthetic.yaml"))
    cfg.merge_from_list([
        "DATASETS.ROOT", root, "OUTPUT_DIR", out, "MODEL.DEVICE", "cpu",
        "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.FCOS.NUM_CONVS", 1,
        "INPUT.MIN_SIZE_TRAIN", (96,), "INPUT.MAX_SIZE_TRAIN", 128,
        "INPUT.MIN_SIZE_TEST", 96, "INPUT.MAX_SIZE_TEST", 128,
        "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 6, "SOLVER.CHECKPOINT_PERIOD", 3,
        "SOLVER.WARMUP_ITERS", 2, "SOLVER.STEPS", (4,), "SOLVER.LOG_PERIOD", 1,
        "TEST.IMS_PER_BATCH", 4,
    ])
    return cfg
