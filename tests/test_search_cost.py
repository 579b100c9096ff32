"""Cost-aware search: the expected head cost (one-hot == the counted augment head, finite-
difference gradient), a changed augment edge reaching the table by itself, penalties in the
first- and second-order objective, COST none bit for bit, a tight FLOP target moving a short
search to cheaper ops, the latency table."""
import json
import os

import pytest
import torch
from torch import nn

from fad.config import get_cfg_defaults
from fad.errors import ConfigError
from fad.nas import cells
from fad.nas.flops import count_flops, head_flops, level_sizes
from fad.nas.genotype import read_genotype_file
from fad.nas.primitives import PRIMITIVES
from fad.search.architect import Architect
from fad.search.cost import (
    COST_FILE,
    cost_penalty,
    expected_head_cost,
    flops_table,
    genotype_head_cost,
    latency_settings,
    latency_table,
)
from fad.search.derive import derive_genotype
from fad.search.engine import SearchStep, mean_over_ranks, run_search
from fad.search.supernet import build_supernet
from fad.utils.seed import seed_everything

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER = os.path.join(REPO, "configs", "fad", "genotypes", "fad_paper.log")
OTHER = ("Genotype(normal=[[('std_conv_3x3', 1), ('sinSep_conv_3x3_x3', 0)], "
         "[('std_conv_3x3_x2+dil_conv_3x3', 2), ('std_conv_3x3+dil_conv_3x3', 0)], "
         "[('sinSep_conv_3x3_x2', 3), ('std_conv_3x3_x3', 1)]], normal_concat=range(2, 5))")


def _cfg(*opts):
    cfg = get_cfg_defaults()
    cfg.merge_from_list(["MODEL.FPN.OUT_CHANNELS", 48, "MODEL.FAD.TOWER_CHANNELS", 32,
                         "MODEL.FAD.EDGE_CHANNELS", 16, "MODEL.FAD.BOX_CELLS", 2,
                         "MODEL.FAD.CLS_CELLS", 1, "MODEL.FAD.COST_INPUT_SIZE", (100, 150),
                         *opts])
    return cfg


def _one_hot_alphas(genotype, big=60.0):
    """Alphas (float64) whose chosen edges are one-hot on their op and all others on `none`."""
    alphas = []
    for i, node in enumerate(genotype.normal):
        a = torch.zeros(i + 2, len(PRIMITIVES), dtype=torch.float64)
        a[:, -1] = big
        for op, src in node:
            a[src, -1] = 0.0
            a[src, PRIMITIVES.index(op)] = big
        alphas.append(a)
    return alphas


def _edges(genotype):
    return [sorted(node) for node in genotype.normal]


def test_expected_cost_of_one_hot_alphas_is_the_counted_augment_head(tmp_path):
    cfg = _cfg()
    table = flops_table(cfg, num_classes=5)
    assert table.input_size == (128, 160)  # padded to INPUT.SIZE_DIVISIBILITY
    box, cls = read_genotype_file(PAPER)
    (tmp_path / "g.log").write_text(OTHER + "\n" + OTHER + "\n")
    other, _ = read_genotype_file(str(tmp_path / "g.log"))
    for b, c in ((box, cls), (cls, other), (other, box)):
        counted = head_flops(cfg, 5, b, c, (100, 150))
        alphas = {"box": _one_hot_alphas(b), "cls": _one_hot_alphas(c)}
        for tower, g in (("box", b), ("cls", c)):  # the derivation picks these edges back
            assert _edges(derive_genotype(alphas[tower])) == _edges(g)
        expected = float(expected_head_cost(table, alphas))
        assert expected == pytest.approx(counted["head"] / 1e9, rel=1e-9)
        assert genotype_head_cost(table, b, c) == pytest.approx(counted["head"] / 1e9, rel=1e-12)
        assert counted["box_tower"] > 0 and counted["cls_tower"] > 0


def test_a_changed_augment_edge_reaches_the_cost_table(monkeypatch):
    """The table counts the augment stage's own edge: give every edge an extra 3x3 conv (C -> C,
    no edit of the cost code) and each candidate's cost grows by exactly that conv's FLOPs, the
    cost equals the FLOPs measured on the new edge module, and the table's head cost equals
    the FLOPs counted on the augment head that is now built."""
    cfg = _cfg()
    before = flops_table(cfg, num_classes=5)
    original = cells.augment_edge

    def with_extra_conv(op, tower_channels, edge_channels):
        squeeze, discrete, expand = original(op, tower_channels, edge_channels)
        return nn.Sequential(squeeze, discrete,
                             nn.Conv2d(edge_channels, edge_channels, 3, padding=1), expand)

    monkeypatch.setattr(cells, "augment_edge", with_extra_conv)
    after = flops_table(cfg, num_classes=5)
    levels = level_sizes((128, 160))
    assert levels == [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]
    extra = sum(2 * 16 * 16 * 9 * h * w for h, w in levels) / 1e9  # C = 16, 2 FLOPs per MAC
    for name, cost in before.ops.items():
        assert after.ops[name] == pytest.approx(cost + extra, rel=1e-12)
        edge = with_extra_conv(name, 32, 16).to("meta")
        measured = sum(count_flops(edge, torch.empty(1, 32, h, w, device="meta"))
                       for h, w in levels)
        assert after.ops[name] == pytest.approx(measured / 1e9, rel=1e-12)
    assert after.fixed == before.fixed
    box, cls = read_genotype_file(PAPER)
    counted = head_flops(cfg, 5, box, cls, (100, 150))["head"] / 1e9
    assert genotype_head_cost(after, box, cls) == pytest.approx(counted, rel=1e-12)
    assert genotype_head_cost(after, box, cls) == pytest.approx(
        genotype_head_cost(before, box, cls) + (2 * 6 + 1 * 6) * extra, rel=1e-12)


def test_expected_cost_gradient_by_finite_differences():
    table = flops_table(_cfg(), num_classes=3)
    torch.manual_seed(0)
    box = [torch.randn(i + 2, len(PRIMITIVES), dtype=torch.float64, requires_grad=True)
           for i in range(3)]
    cls = [torch.randn(i + 2, len(PRIMITIVES), dtype=torch.float64, requires_grad=True)
           for i in range(3)]

    def cost(*alphas):
        return expected_head_cost(table, {"box": alphas[:3], "cls": alphas[3:]})

    assert torch.autograd.gradcheck(cost, (*box, *cls), eps=1e-6, atol=1e-8, rtol=1e-6)
    # the same share of `none` on every edge leaves the cost alone (the derivation skips `none`)
    def with_none(alphas, share):
        out = []
        for a in alphas:
            a = a.detach().clone()
            a[:, -1] = a[:, :-1].logsumexp(-1) + torch.tensor(share / (1 - share)).log()
            out.append(a)
        return out

    fixed = [a.detach() for a in cls]
    low, high = (float(cost(*with_none(box, q), *fixed)) for q in (0.05, 0.95))
    assert low == pytest.approx(high, rel=1e-12)


def test_penalty_forms():
    """The MODEL.FAD.COST* keys are checked when the config loads (test_config_validation)."""
    c = torch.tensor([0.5, 1.0, 2.0])
    assert cost_penalty("hinge", c, 1.0, 2.0).tolist() == [0.0, 0.0, 2.0]
    torch.testing.assert_close(cost_penalty("log", c, 1.0, 2.0), 2.0 * c.log())
    with pytest.raises(ValueError, match="kind must be one of hinge, log, got 'square'"):
        cost_penalty("square", c, 1.0, 2.0)


class _Tiny(nn.Module):
    """One mixed edge over two linear ops; `alpha` Tensor[2] kept apart from the weights."""

    def __init__(self):
        super().__init__()
        self.ops = nn.ModuleList([nn.Linear(3, 3), nn.Linear(3, 3)])
        self.alpha = nn.Parameter(torch.tensor([0.3, -0.2], dtype=torch.float64))

    def forward(self, x):
        w = self.alpha.softmax(-1)
        return sum(wk * torch.tanh(op(x)) for wk, op in zip(w, self.ops))


@pytest.mark.parametrize("second_order", [False, True])
def test_penalty_gradient_is_added_in_first_and_second_order(second_order):
    torch.manual_seed(0)
    model = _Tiny().double()
    weights = [p for n, p in model.named_parameters() if n != "alpha"]
    batches = [(torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64))
               for _ in range(2)]

    def loss_fn(batch):
        x, y = batch
        return (model(x) - y).square().mean()

    def penalty():
        return 0.7 * (model.alpha.softmax(-1) @ torch.tensor([1.0, 3.0], dtype=torch.float64))

    opt = torch.optim.SGD(weights, lr=0.1, momentum=0.9)
    grads = []
    for pen in (None, penalty):
        arch = Architect(loss_fn, weights, [model.alpha], second_order=second_order, penalty=pen)
        if second_order:
            g, _ = arch.unrolled_grads(batches[1], batches[0], opt)
        else:
            g = torch.autograd.grad(arch._objective(loss_fn(batches[1])), model.alpha)
        grads.append(g[0])
    extra = torch.autograd.grad(penalty(), model.alpha)[0]
    torch.testing.assert_close(grads[1] - grads[0], extra, rtol=1e-10, atol=1e-12)


def _search_cfg(*opts):
    cfg = get_cfg_defaults()
    cfg.merge_from_file(os.path.join(REPO, "configs", "fad", "search",
                                     "fad-fcos_tiny_synthetic.yaml"))
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.FAD.TOWER_CHANNELS", 32,
        "MODEL.FAD.EDGE_CHANNELS", 32, "INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 96,
        "SOLVER.IMS_PER_BATCH", 1, "SOLVER.WARMUP_ITERS", 1, "SEARCH.ARCH_LR", 0.05, *opts])
    return cfg


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    boxes = torch.tensor([[10.0, 12.0, 50.0, 40.0], [30.0, 5.0, 90.0, 60.0]])
    return [torch.rand(3, 64, 96, generator=g)], [{"boxes": boxes,
                                                   "labels": torch.tensor([0, 2])}]


def _run_steps(cfg, steps, plain_architect=False):
    seed_everything(0)
    model = build_supernet(cfg, 3).train()
    step = SearchStep(cfg, model, torch.device("cpu"))
    if plain_architect:  # the architect as built before the cost term existed
        s = cfg.SEARCH
        step.architect = Architect(step.loss, step.weights, model.arch_parameters(),
                                   lr=s.ARCH_LR, betas=s.ARCH_BETAS,
                                   weight_decay=s.ARCH_WEIGHT_DECAY, second_order=False,
                                   reduce=mean_over_ranks, scaler=step.scaler)
    outs = [step.run((_batch(2 * i), _batch(2 * i + 1))) for i in range(steps)]
    return model, outs


def test_cost_none_is_the_original_objective_bit_for_bit():
    none, outs = _run_steps(_search_cfg(), 2)
    plain, _ = _run_steps(_search_cfg(), 2, plain_architect=True)
    for (n, a), (_, b) in zip(none.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a, b), n
    assert "head_gflops" in outs[-1].scalars  # logged, not optimised
    costly, _ = _run_steps(_search_cfg("MODEL.FAD.COST", "flops", "MODEL.FAD.COST_TARGET", 0.01),
                           2)
    assert any(not torch.equal(a, b) for a, b in zip(none.arch_parameters(),
                                                     costly.arch_parameters()))


@pytest.mark.slow
def test_tight_flop_target_moves_a_short_search_to_cheaper_ops(synthetic_root, tmp_path):
    costs = {}
    for name, opts in (("free", []), ("tight", ["MODEL.FAD.COST", "flops",
                                                "MODEL.FAD.COST_TARGET", 0.05])):
        out = str(tmp_path / name)
        cfg = _search_cfg("DATASETS.ROOT", synthetic_root, "OUTPUT_DIR", out,
                          "SOLVER.MAX_ITER", 6, "SOLVER.CHECKPOINT_PERIOD", 6, *opts)
        seed_everything(0)
        run_search(cfg, torch.device("cpu"))
        with open(os.path.join(out, COST_FILE)) as f:
            costs[name] = json.load(f)
    free, tight = costs["free"], costs["tight"]
    assert tight["target"] == 0.05 and free["target"] is None and free["cost"] == "none"
    for c in (free, tight):
        assert c["derived_head_gflops"] == pytest.approx(c["derived_head_table"], rel=1e-5)
    assert tight["derived_head_gflops"] < free["derived_head_gflops"]
    assert tight["expected_head"] < free["expected_head"]


def test_latency_table_from_json_and_mismatch(tmp_path):
    cfg = _cfg("MODEL.FAD.COST", "latency", "MODEL.FAD.COST_TARGET", 5.0)
    row = {"benchmark": "op_latency", **latency_settings(cfg, 4),
           "ops_ms": {op: 0.1 * k for k, op in enumerate(PRIMITIVES[:-1], 1)}, "fixed_ms": 2.0}
    path = tmp_path / "lat.json"
    path.write_text(json.dumps(row) + "\n")
    cfg.merge_from_list(["MODEL.FAD.COST_LATENCY_TABLE", str(path)])
    table = latency_table(cfg, 4)
    assert table.unit == "ms" and table.fixed == 2.0 and table.ops["std_conv_3x3"] == 0.1
    box, cls = read_genotype_file(PAPER)
    alphas = {"box": _one_hot_alphas(box), "cls": _one_hot_alphas(cls)}
    assert float(expected_head_cost(table, alphas)) == pytest.approx(
        genotype_head_cost(table, box, cls), rel=1e-9)
    with pytest.raises(ConfigError, match="num_classes 4 \\(config: 5\\)"):
        latency_table(cfg, 5)
    cfg.merge_from_list(["MODEL.FAD.COST_LATENCY_TABLE", str(tmp_path / "missing.json")])
    with pytest.raises(ConfigError, match="op_latency"):
        latency_table(cfg, 4)


def test_op_latency_benchmark_writes_a_table_the_search_reads(tmp_path):
    from fad.cli.bench import main as bench

    path = str(tmp_path / "op_latency.json")
    sizes = ["MODEL.FPN.OUT_CHANNELS", "48", "MODEL.FAD.TOWER_CHANNELS", "32",
             "MODEL.FAD.EDGE_CHANNELS", "16", "MODEL.FAD.BOX_CELLS", "2",
             "MODEL.FAD.CLS_CELLS", "1", "MODEL.FAD.COST_INPUT_SIZE", "(100,150)"]
    bench(["op_latency", "--num-classes", "5", "--repeats", "1", "--device", "cpu",
           "--json", path, *sizes])
    cfg = _cfg("MODEL.FAD.COST", "latency", "MODEL.FAD.COST_TARGET", 1.0,
               "MODEL.FAD.COST_LATENCY_TABLE", path)
    table = latency_table(cfg, 5)
    assert table.input_size == (128, 160) and set(table.ops) == set(PRIMITIVES[:-1])
    assert table.fixed > 0 and all(v > 0 for v in table.ops.values())


def test_visualize_prints_head_gflops(tmp_path, capsys):
    from fad.cli.visualize import main as visualize

    cfg_file = tmp_path / "small.yaml"
    cfg_file.write_text(_cfg().dump())
    visualize([PAPER, "--out", str(tmp_path), "--format", "svg", "--input-size", "100", "150",
               "--config-file", str(cfg_file), "--num-classes", "5"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    head = head_flops(_cfg(), 5, *read_genotype_file(PAPER), (100, 150))["head"]
    assert line.startswith("head GFLOPs at 100x150 (5 classes, towers 32 wide, C = 16, 2 + 1")
    assert line.endswith(f"head {head / 1e9:.4f}")
