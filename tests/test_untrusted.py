"""Untrusted files (issue #22 item 6): checkpoints load with torch's weights-only unpickler (a
planted pickle payload is not run), config files are parsed with yaml.safe_load (also one named
*.py, which yacs would execute), genotype text is parsed, never executed."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO

from fad.config import load_config
from fad.engine.checkpoint import Checkpointer
from fad.errors import CheckpointError, ConfigError, GenotypeError
from fad.nas.genotype import parse_genotype_text


class Payload:
    """Unpickling it creates the file `marker` (a stand-in for any code an attacker runs)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _planted(tmp_path: Path) -> tuple[Path, Path]:
    marker, path = tmp_path / "payload_ran", tmp_path / "model_final.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "iteration": 3, "x": Payload(str(marker))}, path)
    return path, marker


def test_the_payload_runs_with_the_full_unpickler(tmp_path):  # the planted file is real
    path, marker = _planted(tmp_path)
    torch.load(path, weights_only=False)
    assert marker.is_dir()


def test_a_checkpoint_payload_is_not_run(tmp_path):
    path, marker = _planted(tmp_path)
    with pytest.raises(CheckpointError, match="holds more than weights .it names posix.mkdir"):
        Checkpointer.load(str(path))
    assert not marker.exists()


@pytest.mark.slow
def test_fad_test_refuses_the_payload_in_one_line(synthetic_root, tmp_path):
    path, marker = _planted(tmp_path)
    run = subprocess.run([sys.executable, os.path.join(REPO, "tools", "test_net.py"),
                          "--config-file",
                          os.path.join(REPO, "configs", "fcos", "fcos_tiny_synthetic.yaml"),
                          "DATASETS.ROOT", synthetic_root, "OUTPUT_DIR", str(tmp_path / "out"),
                          "MODEL.DEVICE", "cpu", "MODEL.WEIGHT", str(path)],
                         capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 2 and not marker.exists()
    assert run.stderr.startswith(f"error: checkpoint {path} holds more than weights")
    assert run.stderr.count("\n") == 1


@pytest.mark.parametrize("name", ["evil.yaml", "evil.py"])
def test_config_files_are_parsed_safely(tmp_path, name):
    marker = tmp_path / "yaml_ran"
    config = tmp_path / name
    config.write_text(f"SEED: !!python/object/apply:os.mkdir ['{marker}']\n" if name.endswith(
        "yaml") else f"import os\nos.mkdir('{marker}')\ncfg = {{}}\n")
    with pytest.raises(ConfigError, match=re.escape(str(config))):
        load_config(str(config))
    assert not marker.exists()


def test_genotype_text_is_parsed_not_executed(tmp_path):
    marker = tmp_path / "genotype_ran"
    text = f"__import__('os').mkdir('{marker}')"
    with pytest.raises(GenotypeError):
        parse_genotype_text(text, "genotype.log")
    assert not marker.exists()


def test_every_torch_load_of_the_package_is_weights_only():
    """Only the converter's --trust-file path may run a file's pickle."""
    unsafe = []
    for folder in ("fad", "search", "augment", "tools"):
        for path in Path(REPO, folder).rglob("*.py"):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if "torch.load(" in line and "weights_only=True" not in line:
                    unsafe.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert unsafe == ["fad/convert/common.py:88: obj = torch.load(path, map_location=\"cpu\", "
                      "weights_only=False)"]
    source = Path(REPO, "fad", "convert", "common.py").read_text().splitlines()
    assert source[86].strip() == "if trust:"


def test_a_checkpoint_from_before_tensor_rng_states_loads_and_resumes_its_streams(tmp_path):
    """Checkpoints written before the RNG state was kept as tensors hold numpy's generator state
    as a uint32 array: they still load (plain numpy arrays are data), and the state restores."""
    import random

    import numpy as np

    from fad.engine.trainer import set_rng_state

    np.random.seed(5)
    state = {"model": {"w": torch.ones(2)}, "iteration": 4, "cfg": "SEED: 1\n",
             "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                     "torch": torch.get_rng_state()}}
    expected = np.random.rand(3)
    path = tmp_path / "old.pth"
    torch.save(state, path)
    loaded = Checkpointer.load(str(path))
    assert torch.equal(loaded["model"]["w"], torch.ones(2))
    np.random.seed(0)
    set_rng_state(loaded["rng"])
    assert np.array_equal(np.random.rand(3), expected)
    objects = tmp_path / "objects.pth"
    torch.save({"x": np.array([Payload(str(tmp_path / "ran"))], dtype=object)}, objects)
    with pytest.raises(CheckpointError):  # an object array is refused, its payload not run
        Checkpointer.load(str(objects))
    assert not (tmp_path / "ran").exists()
