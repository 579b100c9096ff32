"""`per_forward`: what is the same at every FPN level is made once per head forward and thread
(the search head's alpha softmax and each node's fold), and the head computes what its
level-by-level definition computes, outputs and gradients (alphas included)."""
import threading

import pytest
import torch

from fad.config import get_cfg_defaults
from fad.modeling.fcos import per_forward
from fad.modeling.fcos.head import flatten_level_outputs
from fad.modeling.fcos.per_forward import levels_scope, once
from fad.nas import repshare
from fad.search.supernet import build_search_head

SIZES = ((12, 10), (6, 5), (3, 3), (2, 2), (1, 1))


def test_once_keeps_a_value_per_key_inside_a_scope_only():
    calls = []

    def make(tag):
        return lambda: calls.append(tag) or len(calls)

    a, b = object(), object()
    assert once(a, make("outside")) == 1 and once(a, make("outside")) == 2
    with levels_scope():
        assert once(a, make("a")) == 3 and once(a, make("a again")) == 3
        assert once(b, make("b")) == 4
        with levels_scope():  # a nested scope starts empty and hands the outer one back
            assert once(a, make("inner a")) == 5
        assert once(a, make("a after")) == 3
    assert once(a, make("after")) == 6
    assert calls == ["outside", "outside", "a", "b", "inner a", "after"]


def test_each_thread_has_its_own_scope():
    key, seen = object(), {}

    def worker():
        seen["worker outside"] = once(key, lambda: "worker")
        with levels_scope():
            seen["worker"] = once(key, lambda: "worker's")

    with levels_scope():
        seen["main"] = once(key, lambda: "main's")
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
        seen["main after"] = once(key, lambda: "not this")
    assert seen == {"worker outside": "worker", "worker": "worker's", "main": "main's",
                    "main after": "main's"}


def _head(shared: bool):
    cfg = get_cfg_defaults()
    cfg.merge_from_list(["MODEL.FPN.OUT_CHANNELS", 16, "MODEL.FAD.TOWER_CHANNELS", 16,
                         "MODEL.FAD.EDGE_CHANNELS", 8])
    torch.manual_seed(0)
    head = build_search_head(cfg, 3, shared=shared).double()
    with torch.no_grad():  # alphas far from uniform, so a wrong weight would show
        for a in (*head.box_tower.alphas, *head.cls_tower.alphas):
            a.normal_(0, 1)
    return head


def _outputs_and_grads(head, feats, per_level: bool):
    """forward (the head's, or its `level` called outside any scope) + backward of a weighted
    sum of the outputs: outputs, feature and parameter gradients."""
    head.zero_grad(set_to_none=True)
    feats = [f.clone().requires_grad_() for f in feats]
    if per_level:
        logits, regs, ctrs = zip(*[head.level(i, f) for i, f in enumerate(feats)])
        outs = [flatten_level_outputs(list(maps)) for maps in (logits, regs, ctrs)]
    else:
        out = head(feats)
        outs = [out[k] for k in ("cls_logits", "bbox_regression", "bbox_ctrness")]
    outs = [t.flatten() for t in outs]
    flat = torch.cat(outs)
    (flat * torch.linspace(-1, 1, flat.numel(), dtype=flat.dtype)).sum().backward()
    return flat.detach(), [f.grad for f in feats], {n: p.grad for n, p in head.named_parameters()}


@pytest.mark.parametrize("shared", [True, False], ids=["repshare", "separate"])
def test_the_head_equals_its_level_by_level_definition(shared):
    head = _head(shared)
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(2, 16, h, w, generator=g, dtype=torch.float64) for h, w in SIZES]
    flat_a, feat_a, param_a = _outputs_and_grads(head, feats, per_level=False)
    flat_b, feat_b, param_b = _outputs_and_grads(head, feats, per_level=True)
    torch.testing.assert_close(flat_a, flat_b, rtol=1e-10, atol=1e-12)
    for a, b in zip(feat_a, feat_b):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert param_a.keys() == param_b.keys()
    assert any("alphas" in n for n in param_a)
    for name in param_a:
        torch.testing.assert_close(param_a[name], param_b[name], rtol=1e-9, atol=1e-12,
                                   msg=name)


def test_the_head_folds_each_node_once_per_forward(monkeypatch):
    head = _head(shared=True)
    folds = []
    fold = repshare.fold
    monkeypatch.setattr("fad.search.cells.fold",
                        lambda tails, weights: folds.append(1) or fold(tails, weights))
    feats = [torch.randn(1, 16, h, w, dtype=torch.float64) for h, w in SIZES]
    nodes = head.box_tower.cells[0].num_nodes + head.cls_tower.cells[0].num_nodes
    head(feats)
    assert len(folds) == nodes  # a node's edges are mixed (and folded) together
    folds.clear()
    for i, f in enumerate(feats):  # level by level outside a scope: every level folds
        head.level(i, f)
    assert len(folds) == nodes * len(SIZES)
    assert getattr(per_forward._local, "values", None) is None  # no scope left open
