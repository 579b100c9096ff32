"""torch.compile on the CPU: the FCOS head (plain and searched) and the search tower trace in one
graph (`torch._dynamo.explain`: no graph break) and the compiled module gives the eager outputs;
SOLVER.COMPILE compiles the training step's model and checkpoints keep the plain key names.
Backend "eager" (dynamo's graph capture without inductor's C++ build) keeps the tests fast."""
from __future__ import annotations

import functools
import os

import pytest
import torch
import torch._dynamo

from fad.config.build import load_config
from fad.engine.trainer import DetectorStep
from fad.modeling import build_detector
from fad.modeling.fcos import FCOSHead, build_fad_head
from fad.nas.genotype import read_genotype_file
from fad.search.engine import SearchStep
from fad.search.supernet import build_search_head, build_supernet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FCOS_TINY = os.path.join(REPO, "configs", "fcos", "fcos_tiny_synthetic.yaml")
SEARCH_TINY = os.path.join(REPO, "configs", "fad", "search", "fad-fcos_tiny_synthetic.yaml")
AUGMENT_TINY = os.path.join(REPO, "configs", "fad", "augment", "fad-fcos_tiny_synthetic.yaml")
PAPER = os.path.join(REPO, "configs", "fad", "genotypes", "fad_paper.log")


def _features(channels: int, seed: int = 0) -> list[torch.Tensor]:
    """P3-P7 of a 64 x 96 input: [2, channels, H_l, W_l]."""
    g = torch.Generator().manual_seed(seed)
    sizes = [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]
    return [torch.randn(2, channels, h, w, generator=g) for h, w in sizes]


def _assert_one_graph_same_outputs(module: torch.nn.Module, *inputs: object,
                                   exact: bool = True) -> None:
    """One graph, no break, and the outputs of eager (bit-identical unless `exact` is False:
    compiled, the depthwise convs run PyTorch's convolution instead of our CPU kernel)."""
    torch._dynamo.reset()
    explained = torch._dynamo.explain(module)(*inputs)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    expected = module(*inputs)
    tol = {"rtol": 0, "atol": 0} if exact else {"rtol": 1e-5, "atol": 1e-5}
    compiled = torch.compile(module, backend="eager", fullgraph=True)(*inputs)
    if isinstance(expected, dict):
        assert expected.keys() == compiled.keys()
        for key in expected:
            torch.testing.assert_close(compiled[key], expected[key], **tol)
    else:
        torch.testing.assert_close(compiled, expected, **tol)


def test_fcos_head_compiles_without_graph_break():
    torch.manual_seed(0)
    head = FCOSHead(16, num_classes=3, num_convs=2)
    _assert_one_graph_same_outputs(head, _features(16))


def test_searched_head_of_the_paper_genotype_compiles_without_graph_break():
    cfg = load_config(AUGMENT_TINY)
    box, cls = read_genotype_file(PAPER, num_nodes=cfg.MODEL.FAD.NUM_NODES)
    torch.manual_seed(0)
    head = build_fad_head(cfg, 3, box, cls)
    _assert_one_graph_same_outputs(head, _features(cfg.MODEL.FPN.OUT_CHANNELS), exact=False)


def test_search_tower_compiles_without_graph_break():
    cfg = load_config(SEARCH_TINY)
    torch.manual_seed(0)
    tower = build_search_head(cfg, 3).box_tower
    feat = _features(cfg.MODEL.FPN.OUT_CHANNELS)[0]
    _assert_one_graph_same_outputs(tower, feat, feat, exact=False)


def _batch() -> tuple[list[torch.Tensor], list[dict]]:
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 64, 80, generator=g), torch.rand(3, 48, 64, generator=g)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 30.0], [20.0, 10.0, 60.0, 44.0]]),
                "labels": torch.tensor([0, 2])},
               {"boxes": torch.tensor([[8.0, 8.0, 30.0, 40.0]]), "labels": torch.tensor([1])}]
    return images, targets


@pytest.fixture
def eager_compile(monkeypatch):
    """torch.compile with the "eager" backend (no inductor build in a unit test)."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    torch._dynamo.reset()


def test_solver_compile_compiles_the_detector_step_and_keeps_checkpoint_keys(eager_compile):
    losses, states = {}, {}
    for compile_ in (False, True):
        cfg = load_config(FCOS_TINY, ["SOLVER.COMPILE", compile_])
        torch.manual_seed(0)
        model = build_detector(cfg, 3)
        step = DetectorStep(cfg, model, torch.device("cpu"))
        assert isinstance(step.net, torch._dynamo.eval_frame.OptimizedModule) == compile_
        assert step.model is model
        losses[compile_] = step.run(_batch()).losses
        states[compile_] = step.model.state_dict()
    assert list(states[True]) == list(states[False])
    assert not any(k.startswith("_orig_mod") for k in states[True])
    for key, value in losses[False].items():
        torch.testing.assert_close(losses[True][key], value)
    for key, value in states[False].items():
        torch.testing.assert_close(states[True][key], value)


def test_solver_compile_compiles_the_search_step_forward():
    cfg = load_config(SEARCH_TINY, ["SOLVER.COMPILE", True])
    model = build_supernet(cfg, 3)
    step = SearchStep(cfg, model, torch.device("cpu"))
    assert isinstance(step.net, torch._dynamo.eval_frame.OptimizedModule)
    assert step.net._orig_mod is model and step.model is model


@pytest.mark.heavy  # minutes: dynamo traces the whole supernet, each order
@pytest.mark.parametrize("second_order", [False, True])
def test_compiled_search_step_runs_and_matches_eager(eager_compile, second_order):
    """SOLVER.COMPILE in a search: the alpha step (first or second order) and the weight step
    run through the compiled supernet and leave the weights and alphas of the eager step."""
    states, outputs = {}, {}
    for compile_ in (False, True):
        cfg = load_config(SEARCH_TINY, ["SOLVER.COMPILE", compile_,
                                        "SEARCH.SECOND_ORDER", second_order])
        torch.manual_seed(0)
        model = build_supernet(cfg, 3)
        step = SearchStep(cfg, model, torch.device("cpu"))
        assert isinstance(step.net, torch._dynamo.eval_frame.OptimizedModule) == compile_
        outputs[compile_] = step.run((_batch(), _batch()))
        states[compile_] = model.state_dict()
    for key in ("losses", "scalars"):
        for name, value in getattr(outputs[False], key).items():
            torch.testing.assert_close(getattr(outputs[True], key)[name], value)
    assert list(states[True]) == list(states[False])
    for key, value in states[False].items():
        torch.testing.assert_close(states[True][key], value, msg=key)
