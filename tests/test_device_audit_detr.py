"""The device audit of the set-prediction detectors: every shipped Deformable DETR, Sparse DETR
and ASAG config passes (`fad-device-audit` exits 0); the per-call MSDA shape read-back is gone;
the Hungarian matcher's host solver is stood in for only while the audit runs."""
from __future__ import annotations

import glob
import os

import pytest
import torch

from fad.cli.device_audit import main, run_audit
from fad.config.build import load_config
from fad.engine.device_audit import DeviceAudit
from fad.modeling.set_prediction import HungarianMatcher, hungarian_assignment
from fad.ops.msda import MSDeformAttn, level_tensors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = ("deformable_detr", "sparse_detr", "asag")
SHIPPED = sorted(
    os.path.relpath(path, REPO)
    for family in FAMILIES
    for path in glob.glob(os.path.join(REPO, "configs", family, "*.yaml"))
    if not os.path.basename(path).startswith("Base-"))
TINY = [path for path in SHIPPED if path.endswith("tiny_synthetic.yaml")]


def test_every_family_ships_configs():
    assert len(TINY) == len(FAMILIES) and len(SHIPPED) > len(TINY)


@pytest.mark.slow
@pytest.mark.timeout(1200)  # fake tensors: no compute, but every op dispatched in Python
@pytest.mark.parametrize("config", TINY)
def test_tiny_configs_pass_and_name_only_their_host_syncs(config, capsys):
    main(["--config-file", os.path.join(REPO, config)])  # exit 0: no SystemExit
    out = capsys.readouterr().out
    assert out.rstrip().endswith("0 not allowed"), out
    assert "scipy's Hungarian assignment" in out  # the matcher's sync is reported, allowed
    assert "fad/ops/msda" not in out  # no MSDA finding: the shapes are never read back


@pytest.mark.heavy
@pytest.mark.timeout(1800)  # a full R50/R101 model: ~1-2 min on an idle core, 3 phases
@pytest.mark.parametrize("config", [path for path in SHIPPED if path not in TINY])
def test_shipped_configs_pass_the_audit(config):
    audit = run_audit(load_config(os.path.join(REPO, config)))
    assert audit.failures == [], "\n".join(audit.lines())


def test_msda_layer_reads_no_shape_back_on_a_fake_gpu():
    """With the level shapes as host ints the layer's forward makes no finding on fake CUDA
    (no `.tolist()` of the shape tensor); without them the op's read-back is found."""
    shapes = [(4, 3), (2, 2)]
    for given in (shapes, None):
        audit = DeviceAudit()
        with audit.fake("cuda") as make:
            layer, query, ref, value, (spatial, starts) = make(lambda: (
                MSDeformAttn(8, 2, 2, 2), torch.rand(1, 5, 8), torch.rand(1, 5, 2, 2),
                torch.rand(1, 16, 8), level_tensors(shapes, "cuda")))
            with audit.phase("forward"):
                layer(query, ref, value, spatial, starts, level_shapes=given)
        if given:
            assert audit.findings == [], audit.lines()
        else:
            assert any(f.where.startswith("fad/ops/msda/schema.py") and "tolist()" in f.code
                       for f in audit.failures), audit.lines()


@pytest.mark.heavy
@pytest.mark.timeout(1200)
def test_the_stand_in_is_used_only_during_the_audit():
    assert HungarianMatcher.assignment is hungarian_assignment
    run_audit(load_config(os.path.join(REPO, TINY[0])))
    assert HungarianMatcher.assignment is hungarian_assignment
    cost = torch.tensor([[3.0, 1.0], [1.0, 3.0], [0.0, 0.0]])
    rows, cols = HungarianMatcher.assignment(cost, torch.tensor([True, True, False]))
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]
