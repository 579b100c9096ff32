"""Config loading errors and atomic, validated checkpoints."""
import os

import pytest
import torch

from fad.config import get_cfg_defaults, load_config
from fad.engine.checkpoint import Checkpointer, load_model_weights
from fad.errors import CheckpointError, ConfigError


def test_every_default_key_is_commented():
    import inspect
    import re

    import fad.config.defaults as d
    import fad.config.defaults_asag as asag
    import fad.config.defaults_detr as detr
    import fad.config.defaults_fad as fad_
    import fad.config.defaults_rcnn as rcnn
    import fad.config.defaults_sparse as sparse

    checked = 0
    for module in (d, asag, detr, fad_, rcnn, sparse):
        previous = ""
        for line in inspect.getsource(module).splitlines():
            code = line.strip()
            if re.match(r"\w+(\.[A-Z0-9_]+)+ = ", code) and "CN()" not in code:
                checked += 1
                assert "#" in code or previous.startswith("#"), f"uncommented config key: {code}"
            previous = code
    assert checked > 100  # the five files hold well over 100 keys


def test_overrides_and_unknown_keys(tmp_path):
    cfg = load_config(None, ["SOLVER.MAX_ITER", "7", "MODEL.BACKBONE.DEPTH", "18"])
    assert cfg.SOLVER.MAX_ITER == 7 and cfg.MODEL.BACKBONE.DEPTH == 18
    with pytest.raises(ConfigError, match="bad override: unknown config key SOLVER.NOT_A_KEY"):
        load_config(None, ["SOLVER.NOT_A_KEY", "1"])
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        load_config(None, ["SOLVER.MAX_ITER"])
    with pytest.raises(ConfigError, match="missing.yaml not found"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("SOLVER:\n  NOPE: 1\n")
    with pytest.raises(ConfigError, match="bad.yaml: unknown config key SOLVER.NOPE"):
        load_config(str(bad))
    bad.write_text("SOLVER: [1\n")
    with pytest.raises(ConfigError, match="bad.yaml: not a readable yaml config") as info:
        load_config(str(bad))
    assert "\n" not in str(info.value)


def test_checkpointer_roundtrip_and_errors(tmp_path):
    ck = Checkpointer(str(tmp_path))
    assert ck.last() is None
    ck.save("model_0000010", {"iteration": 10, "w": torch.ones(2)})
    path = ck.save("model_final", {"iteration": 20, "w": torch.zeros(2)})
    assert ck.last() == path and Checkpointer.load(path)["iteration"] == 20
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="broken.pth is corrupt"):
        Checkpointer.load(str(tmp_path / "broken.pth"))
    with pytest.raises(CheckpointError, match="nope.pth does not exist"):
        Checkpointer.load(str(tmp_path / "nope.pth"))


def test_weights_that_do_not_fit_are_one_line():
    model = torch.nn.Linear(2, 3)
    load_model_weights(model, {"model": torch.nn.Linear(2, 3).state_dict()}, "a.pth")
    with pytest.raises(CheckpointError, match="a.pth: the weights do not fit") as info:
        load_model_weights(model, {"model": torch.nn.Linear(4, 3).state_dict()}, "a.pth")
    assert "\n" not in str(info.value)


def test_defaults_are_fresh_copies():
    a = get_cfg_defaults()
    a.SOLVER.MAX_ITER = 1
    assert get_cfg_defaults().SOLVER.MAX_ITER != 1
