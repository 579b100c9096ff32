"""SOLVER.PARALLEL_HEAD_LEVELS: the FCOS head's P3 and P4-P7 on two threads (forward and
backward inside one autograd node) give the sequential loop's outputs and gradients; a detector
step with it equals one without; inference runs the later levels on the worker too (same
outputs, no graph); it stays out of one-thread runs, dispatch modes and DDP."""
import os
import threading

import pytest
import torch
from conftest import REPO, head_grads, tiny_fcos_cfg

from fad.config import get_cfg_defaults
from fad.data import build_dataset, make_train_loader
from fad.engine import amp as amp_module
from fad.engine.amp import tower_convs
from fad.engine.trainer import DetectorStep
from fad.errors import ConfigError
from fad.modeling import build_detector
from fad.modeling.fcos import build_fad_head
from fad.modeling.fcos.head import FCOSHead
from fad.modeling.fcos.parallel_levels import enable_parallel_levels, map_levels
from fad.nas.genotype import read_genotype_file

PAPER = os.path.join(REPO, "configs", "fad", "genotypes", "fad_paper.log")
SIZES = ((16, 12), (8, 6), (4, 3), (2, 2), (1, 1))


@pytest.fixture
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def _searched_head(dtype=torch.float32):
    cfg = get_cfg_defaults()
    cfg.merge_from_list(["MODEL.FPN.OUT_CHANNELS", 32, "MODEL.FAD.TOWER_CHANNELS", 32,
                         "MODEL.FAD.EDGE_CHANNELS", 16])
    box, cls = read_genotype_file(PAPER, num_nodes=3)
    return build_fad_head(cfg, 5, box, cls).to(dtype)


def _plain_head(dtype=torch.float32):
    return FCOSHead(32, 5, num_convs=2).to(dtype)


def _grads(head, features, weights, parallel: int):
    """`head_grads` with the head's levels split at `parallel` (0: one after the other)."""
    head.parallel_levels = parallel
    return head_grads(head, features, weights)


@pytest.mark.parametrize("make_head", [_searched_head, _plain_head], ids=["searched", "plain"])
@pytest.mark.parametrize("first", [1, 3])
def test_two_threads_give_the_loops_outputs_and_gradients(make_head, first, two_threads):
    torch.manual_seed(0)
    head = make_head(torch.float64).train()
    features = [torch.randn(2, 32, h, w, dtype=torch.float64) for h, w in SIZES]
    with torch.no_grad():
        probe = head(features)
    weights = {k: torch.randn_like(v) for k, v in probe.items()}
    out_a, feat_a, par_a = _grads(head, features, weights, parallel=0)
    out_b, feat_b, par_b = _grads(head, features, weights, parallel=first)
    for k in out_a:
        torch.testing.assert_close(out_b[k], out_a[k], rtol=1e-12, atol=1e-12)
    for a, b in zip(feat_a, feat_b):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    assert par_a.keys() == par_b.keys()
    for name in par_a:  # shared weights: the two threads' sums add in another order
        torch.testing.assert_close(par_b[name], par_a[name], rtol=1e-10, atol=1e-12)
    assert torch.get_num_threads() == 2


def test_the_node_appears_only_where_it_applies(two_threads):
    head = _searched_head().train()
    head.parallel_levels = 1
    feats = [torch.randn(1, 32, h, w, requires_grad=True) for h, w in SIZES]
    detached = [f.detach() for f in feats]
    names = lambda out: {n.name() for n in _graph(out["cls_logits"].grad_fn)}  # noqa: E731
    assert "_ParallelLevelsBackward" in names(head(feats))
    assert "_ParallelLevelsBackward" in names(head(detached))  # the parameters' gradients
    with torch.no_grad():
        assert all(v.grad_fn is None for v in head(feats).values())  # the worker's too
    for p in head.parameters():
        p.requires_grad_(False)
    assert head(detached)["cls_logits"].grad_fn is None
    torch.set_num_threads(1)
    assert "_ParallelLevelsBackward" not in names(head(feats))


def _thread_of_each_level(features, first: int, mode) -> tuple[list, list[str]]:
    """map_levels of a level that records its thread, under `mode` (a context manager)."""
    threads = {}

    def level(i, x):
        threads[i] = threading.current_thread().name
        return (x * (i + 1), x.sum((2, 3)))

    with mode():
        out = map_levels(level, features, first, torch.nn.Module())
    return out, [threads[i] for i in range(len(features))]


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inf"])
def test_inference_runs_the_later_levels_on_the_worker(mode, two_threads):
    torch.manual_seed(0)
    feats = [torch.randn(2, 4, h, w, requires_grad=True) for h, w in SIZES]
    out, threads = _thread_of_each_level(feats, 2, mode)
    main = threading.current_thread().name
    assert threads[:2] == [main, main] and all(t.startswith("fad-levels") for t in threads[2:])
    for i, (f, o) in enumerate(zip(feats, out)):
        torch.testing.assert_close(o[0], f.detach() * (i + 1), rtol=0, atol=0)
        assert all(t.grad_fn is None and not t.requires_grad for t in o)
        assert all(t.is_inference() == (mode is torch.inference_mode) for t in o)


def test_a_dispatch_mode_or_one_thread_keeps_every_level_here(two_threads):
    from torch.utils.flop_counter import FlopCounterMode

    feats = [torch.randn(1, 4, h, w) for h, w in SIZES]
    main = threading.current_thread().name
    counter = FlopCounterMode(display=False)
    assert set(_thread_of_each_level(feats, 2, lambda: counter)[1]) == {main}
    torch.set_num_threads(1)
    assert set(_thread_of_each_level(feats, 2, torch.no_grad)[1]) == {main}


def test_an_evaluated_head_on_two_threads_gives_the_loops_detections(two_threads):
    torch.manual_seed(0)
    head = _searched_head(torch.float64).eval()
    feats = [torch.randn(2, 32, h, w, dtype=torch.float64) for h, w in SIZES]
    outs = []
    for first in (0, 1):
        head.parallel_levels = first
        with torch.inference_mode():
            outs.append(head(feats))
    for k in outs[0]:  # the worker's convolutions sum on one intra-op thread: float64
        torch.testing.assert_close(outs[1][k], outs[0][k], rtol=1e-12, atol=1e-12)


def test_autograd_grad_of_some_parameters_equals_the_loops(two_threads):
    """The search's alpha step: weights frozen, features without grad, `autograd.grad` of a
    few parameters (nothing accumulates into `.grad`)."""
    torch.manual_seed(0)
    head = _searched_head(torch.float64).train()
    wanted = [head.cls_logits.weight, head.box_tower.cells[0].edges[0][0].weight]
    for p in head.parameters():
        p.requires_grad_(any(p is w for w in wanted))
    feats = [torch.randn(2, 32, h, w, dtype=torch.float64) for h, w in SIZES]
    found = []
    for first in (0, 2):
        head.parallel_levels = first
        out = head(feats)
        loss = sum((v * torch.linspace(-1, 1, v.numel(), dtype=v.dtype).view_as(v)).sum()
                   for v in out.values())
        found.append(torch.autograd.grad(loss, wanted))
    for a, b in zip(*found):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    assert all(p.grad is None for p in head.parameters())


def _graph(node):
    seen, stack = [], [node]
    while stack:
        n = stack.pop()
        if n is not None and n not in seen:
            seen.append(n)
            stack.extend(f for f, _ in n.next_functions)
    return seen


def test_an_error_on_the_worker_reaches_the_caller_and_threads_are_restored(two_threads):
    feats = [torch.randn(1, 4, 2, 2, requires_grad=True) for _ in range(3)]

    def level(i, x):
        if i == 2:
            raise ValueError("level 2 failed")
        return (x * 2,)

    with pytest.raises(ValueError, match="level 2 failed"):
        map_levels(level, feats, 1, torch.nn.Module())
    assert torch.get_num_threads() == 2
    out = map_levels(lambda i, x: (x * (i + 1),), feats, 2, torch.nn.Module())
    assert [o[0].shape for o in out] == [f.shape for f in feats]
    sum(o[0].sum() for o in out).backward()
    for i, f in enumerate(feats):
        torch.testing.assert_close(f.grad, torch.full_like(f, i + 1.0))


@pytest.mark.parametrize("scope", ["off", "towers"])
def test_a_detector_step_equals_the_sequential_one(synthetic_root, tmp_path, two_threads, scope,
                                                   monkeypatch):
    cfg = tiny_fcos_cfg(synthetic_root, str(tmp_path))
    cfg.merge_from_list(["MODEL.META_ARCHITECTURE", "FCOS", "MODEL.FAD.GENOTYPE", PAPER,
                         "MODEL.FAD.TOWER_CHANNELS", 32, "MODEL.FAD.EDGE_CHANNELS", 16])
    if scope == "towers":  # bf16 on the towers' convs of >= 8 positions: on both threads
        cfg.merge_from_list(["SOLVER.AMP_CPU", True, "SOLVER.AMP_CPU_SCOPE", "towers"])
        monkeypatch.setattr(amp_module, "TOWER_MIN_POSITIONS", 8)
    dataset = build_dataset(cfg, cfg.DATASETS.TRAIN, is_train=True)
    batch = next(iter(make_train_loader(cfg, dataset)))
    seen = set()

    def build(cfg):
        model = build_detector(cfg, dataset.num_classes).train()
        step = DetectorStep(cfg, model, torch.device("cpu"))
        for conv in tower_convs(model):  # after the AMP hooks: sees their autocast
            conv.register_forward_pre_hook(lambda m, a: seen.add(
                (threading.current_thread().name[:10], torch.is_autocast_enabled("cpu"))))
        return model, model.head, step

    tol = {"rtol": 1e-4, "atol": 1e-6} if scope == "off" else {"rtol": 2e-2, "atol": 1e-4}
    _assert_one_step_equal_each_way(cfg, build, batch, 1, tol)
    assert ("fad-levels", scope == "towers") in seen and ("MainThread", scope == "towers") in seen


def test_it_needs_an_fcos_head_and_one_process():
    model = build_detector(get_cfg_defaults(), 3)
    with pytest.raises(ConfigError, match="under torchrun"):
        enable_parallel_levels(model, world_size=2)
    with pytest.raises(ConfigError, match="needs an FCOS detector"):
        enable_parallel_levels(torch.nn.Linear(2, 2), world_size=1)
    enable_parallel_levels(model, world_size=1, first=2)
    assert model.head.parallel_levels == 2


def test_a_search_step_equals_the_sequential_one(synthetic_root, two_threads):
    """Alpha step (autograd.grad of the alphas, weights frozen) and weight step both split."""
    from fad.config import load_config
    from fad.search.engine import SearchStep
    from fad.search.supernet import build_supernet

    cfg = load_config(os.path.join(REPO, "configs", "fad", "search",
                                   "fad-fcos_tiny_synthetic.yaml"),
                      ["DATASETS.ROOT", synthetic_root, "MODEL.DEVICE", "cpu",
                       "INPUT.MIN_SIZE_TRAIN", (96,), "INPUT.MAX_SIZE_TRAIN", 128])
    dataset = build_dataset(cfg, cfg.DATASETS.TRAIN, is_train=True)
    batches = iter(make_train_loader(cfg, dataset))
    pair = (next(batches), next(batches))

    def build(cfg):
        model = build_supernet(cfg, dataset.num_classes).train()
        return model, model.detector.head, SearchStep(cfg, model, torch.device("cpu"))

    state_a = _assert_one_step_equal_each_way(cfg, build, pair, 2, {"rtol": 1e-4, "atol": 1e-6},
                                              loss_tol={"rtol": 1e-5, "atol": 1e-6})
    alphas = [k for k in state_a if "alpha" in k]
    assert alphas and any(not torch.equal(state_a[k], torch.zeros_like(state_a[k]))
                          for k in alphas)


def _assert_one_step_equal_each_way(cfg, build, batch, first: int, tol: dict,
                                    loss_tol: dict | None = None) -> dict:
    """One step of `build(cfg) -> (model, head, step)` with SOLVER.PARALLEL_HEAD_LEVELS off and
    on, from the same seed: the head splits at `first` only when on, and the losses and the
    whole state dict after the step agree within `tol` (the losses within `loss_tol`, default
    `tol`). Returns the sequential state dict."""
    results = []
    for parallel in (False, True):
        cfg.defrost()
        cfg.SOLVER.PARALLEL_HEAD_LEVELS = parallel
        torch.manual_seed(0)
        model, head, step = build(cfg)
        assert head.parallel_levels == (first if parallel else 0)
        losses = step.run(batch).losses
        results.append((losses, {k: v.clone() for k, v in model.state_dict().items()}))
    (loss_a, state_a), (loss_b, state_b) = results
    for k in loss_a:
        torch.testing.assert_close(loss_b[k], loss_a[k], **(loss_tol or tol))
    for k in state_a:
        torch.testing.assert_close(state_b[k], state_a[k], **tol, msg=k)
    assert torch.get_num_threads() == 2
    return state_a
