"""The cost term of a cost-aware search: the expected cost of the derived head under the alphas.

Costs are those of the *derived augment head* (what a user of the searched detector pays), never
of the supernet: a candidate costs its standalone augment edge, `1x1 (T -> C) -> discrete op ->
1x1 (C -> T)`, whatever it shares with its RepShare siblings during the search. A `CostTable`
holds, per candidate name, that edge's cost summed over the FPN levels at one input size, plus
the genotype-independent rest of the head (cell-input adapters, reduce convs, predictors). FLOPs
are counted once by `fad.nas.flops` on the modules the augment stage builds (`augment_edge`, the
augment head without its edges), so the table follows any change of them; latencies come from
the JSON of `fad-bench op_latency`, measured once per device on the same modules.

Expected cost of one node i with incoming edges j (softmax weights p_jk, candidate costs c_k,
`none` last and free), keeping `K = 2` edges as the derivation does:

    e_j = sum_{k != none} p_jk c_k        m_j = sum_{k != none} p_jk
    node_i = K * sum_j e_j / sum_j m_j

i.e. each edge's softmax-weighted candidate cost, with the node's non-`none` mass spread over the
K edges the derived node keeps. With one-hot alphas whose K chosen edges are non-`none` and the
others `none`, this is exactly the derived node's cost; at uniform alphas it is the mean cost of a
randomly derived node. The same share of `none` on every edge of a node leaves it unchanged:
the derivation never picks `none`, so a plain sum over all edges (which `none` would drive to
zero) would reward a collapse that the derived head does not pay for.
Head cost = fixed + box_cells * cell(box alphas) + cls_cells * cell(cls alphas) with the augment
cell counts (MODEL.FAD.BOX_CELLS, CLS_CELLS), as the alphas are shared by the cells of a tower.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from yacs.config import CfgNode

from fad.data.transforms import padded_size
from fad.engine.distributed import is_main_process
from fad.engine.trainer import HookBase, Trainer
from fad.errors import ConfigError
from fad.nas.flops import edge_flops, fixed_flops, head_flops
from fad.nas.genotype import EDGES_PER_NODE, Genotype
from fad.nas.primitives import primitives, primitives_for
from fad.utils.io import atomic_write_text

from .derive import derive_genotype

logger = logging.getLogger("fad")

COSTS = ("none", "flops", "latency")
PENALTIES = ("hinge", "log")
UNITS = {"flops": "GFLOPs", "latency": "ms"}


def cost_input_size(cfg: CfgNode) -> tuple[int, int]:
    """(H, W) the head cost is stated at: MODEL.FAD.COST_INPUT_SIZE, else the largest search
    input (max INPUT.MIN_SIZE_TRAIN x INPUT.MAX_SIZE_TRAIN); padded to INPUT.SIZE_DIVISIBILITY."""
    size = tuple(cfg.MODEL.FAD.COST_INPUT_SIZE) or (max(cfg.INPUT.MIN_SIZE_TRAIN),
                                                    cfg.INPUT.MAX_SIZE_TRAIN)
    return padded_size(cfg, size)


@dataclass(frozen=True)
class CostTable:
    """Costs of the derived head's parts at one input size, summed over the FPN levels.

    `ops`: candidate name -> cost of one augment edge with that op; `fixed`: the rest of the head
    (`fad.nas.flops.fixed_head`); `cells`: augment cells (box, cls); `unit`: "GFLOPs" or "ms".
    """

    unit: str
    ops: dict[str, float]
    fixed: float
    cells: tuple[int, int]
    input_size: tuple[int, int]

    _vectors: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def op_vector(self, names: Sequence[str], like: Tensor) -> Tensor:
        """Tensor[len(names)] of candidate costs (`none` costs 0), dtype/device of `like`; made
        on that device once (no host tensor and copy per step)."""
        key = (tuple(names), like.dtype, like.device)
        if key not in self._vectors:
            self._vectors[key] = torch.stack([
                torch.full((), self.ops.get(n, 0.0), dtype=like.dtype, device=like.device)
                for n in names])
        return self._vectors[key]


def flops_table(cfg: CfgNode, num_classes: int) -> CostTable:
    """The GFLOPs table of the derived head, counted on the augment modules (meta, batch 1)."""
    f = cfg.MODEL.FAD
    size = cost_input_size(cfg)
    ops = {name: edge_flops(name, f.TOWER_CHANNELS, f.EDGE_CHANNELS, size) / 1e9
           for name in primitives(f.DIL3)[:-1]}
    return CostTable("GFLOPs", ops, fixed_flops(cfg, num_classes, size) / 1e9,
                     (f.BOX_CELLS, f.CLS_CELLS), size)


LATENCY_KEYS = ("tower_channels", "edge_channels", "fpn_channels", "num_classes", "box_cells",
                "cls_cells", "num_nodes", "input")


def latency_settings(cfg: CfgNode, num_classes: int) -> dict:
    """What a latency table must have been measured with to fit `cfg` (keys `LATENCY_KEYS`)."""
    f = cfg.MODEL.FAD
    return {"tower_channels": f.TOWER_CHANNELS, "edge_channels": f.EDGE_CHANNELS,
            "fpn_channels": cfg.MODEL.FPN.OUT_CHANNELS, "num_classes": num_classes,
            "box_cells": f.BOX_CELLS, "cls_cells": f.CLS_CELLS, "num_nodes": f.NUM_NODES,
            "input": list(cost_input_size(cfg))}


def latency_table(cfg: CfgNode, num_classes: int) -> CostTable:
    """The ms table of MODEL.FAD.COST_LATENCY_TABLE (JSON of `fad-bench op_latency`), checked
    against the config: widths, cells, classes, input size and every candidate."""
    path = cfg.MODEL.FAD.COST_LATENCY_TABLE
    fix = ("run `fad-bench op_latency --config-file <search config> --num-classes "
           f"{num_classes} --json FILE` on the target device and set MODEL.FAD.COST_LATENCY_TABLE")
    if not path or not os.path.isfile(path):
        raise ConfigError(f"MODEL.FAD.COST latency needs a latency table, {path!r} is not a file; "
                          + fix)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.loads(fh.readline())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ConfigError(f"{path}: not the JSON line of fad-bench op_latency; {fix}") from None
    want = latency_settings(cfg, num_classes)
    wrong = [k for k in LATENCY_KEYS if data.get(k) != want[k]]
    if data.get("benchmark") != "op_latency" or wrong:
        detail = ", ".join(f"{k} {data.get(k)} (config: {want[k]})" for k in wrong)
        raise ConfigError(f"{path}: latency table does not fit the config: "
                          f"{detail or 'not an op_latency table'}; {fix}")
    names = primitives(cfg.MODEL.FAD.DIL3)[:-1]
    missing = [n for n in names if n not in data.get("ops_ms", {})]
    if missing:
        raise ConfigError(f"{path}: no latency for {', '.join(missing)}; {fix}")
    return CostTable("ms", {n: float(data["ops_ms"][n]) for n in names}, float(data["fixed_ms"]),
                     (cfg.MODEL.FAD.BOX_CELLS, cfg.MODEL.FAD.CLS_CELLS),
                     tuple(data["input"]))


def expected_cell_cost(table: CostTable, alphas: Sequence[Tensor]) -> Tensor:
    """Expected cost of one derived cell (see the module docstring); differentiable.

    `alphas[i]`: Tensor[i + 2, num_ops] (`none` last). Returns a 0-dim tensor.
    """
    total = alphas[0].new_zeros(())
    for i, alpha in enumerate(alphas):
        names = primitives_for(alpha.shape[-1])
        weights = alpha.softmax(-1)[:, :-1]
        edge = weights @ table.op_vector(names[:-1], alpha)
        keep = min(EDGES_PER_NODE, i + 2)
        total = total + keep * edge.sum() / weights.sum().clamp_min(1e-12)
    return total


def expected_head_cost(table: CostTable, tower_alphas: dict[str, Sequence[Tensor]]) -> Tensor:
    """fixed + box_cells * cell(box) + cls_cells * cell(cls): 0-dim tensor in `table.unit`."""
    box, cls = (expected_cell_cost(table, tower_alphas[t]) for t in ("box", "cls"))
    return table.fixed + table.cells[0] * box + table.cells[1] * cls


def genotype_head_cost(table: CostTable, box: Genotype, cls: Genotype) -> float:
    """The table's cost of the head of a (box, cls) genotype pair."""
    def cell(g: Genotype) -> float:
        return sum(table.ops[op] for node in g.normal for op, _ in node)
    return table.fixed + table.cells[0] * cell(box) + table.cells[1] * cell(cls)


def cost_penalty(kind: str, cost: Tensor, target: float, weight: float) -> Tensor:
    """`hinge`: w * max(0, cost / target - 1) (a budget: free below the target);
    `log`: w * log(cost / target) (FBNet-style: always pushes, by relative cost)."""
    ratio = cost / target
    if kind == "hinge":
        return weight * (ratio - 1).clamp_min(0)
    if kind == "log":
        return weight * ratio.log()
    raise ValueError(f"cost_penalty: kind must be one of {', '.join(PENALTIES)}, got {kind!r}")


class SearchCost:
    """The cost of a search run: its table (latency with COST latency, else FLOPs, so that an
    unconstrained search still logs its expected GFLOPs) and, unless COST none, the penalty.

    `expected()` -> 0-dim Tensor (differentiable in the alphas); `penalty()` -> 0-dim Tensor.
    """

    def __init__(self, cfg: CfgNode, tower_alphas: Callable[[], dict[str, Sequence[Tensor]]],
                 num_classes: int):
        f = cfg.MODEL.FAD
        self.kind, self.target = f.COST, float(f.COST_TARGET)
        self.penalty_kind, self.weight = f.COST_PENALTY, float(f.COST_WEIGHT)
        self.tower_alphas = tower_alphas
        self.table = latency_table(cfg, num_classes) if f.COST == "latency" else \
            flops_table(cfg, num_classes)
        self.active = f.COST != "none"

    @property
    def scalar_name(self) -> str:
        """Name of the logged expected cost: `head_gflops` or `head_ms`."""
        return "head_" + self.table.unit.lower()

    def expected(self) -> Tensor:
        """The expected derived-head cost under the current alphas (0-dim, `table.unit`)."""
        return expected_head_cost(self.table, self.tower_alphas())

    def penalty(self) -> Tensor:
        """MODEL.FAD.COST_PENALTY of the expected cost (0-dim; joins the alpha objective)."""
        return cost_penalty(self.penalty_kind, self.expected(), self.target, self.weight)

    def summary(self, box: Genotype, cls: Genotype) -> dict:
        """The derived (box, cls) head's table cost, the expectation and the objective."""
        return {"cost": self.kind, "unit": self.table.unit,
                "input_size": list(self.table.input_size),
                "target": self.target if self.active else None,
                "penalty": f"{self.penalty_kind} x {self.weight}" if self.active else None,
                "expected_head": round(float(self.expected().detach()), 6),
                "derived_head_table": round(genotype_head_cost(self.table, box, cls), 6)}


COST_FILE = "genotype_cost.json"


class CostHook(HookBase):
    """After every checkpoint, on the main rank: OUTPUT_DIR/genotype_cost.json (atomic) with the
    derived head's cost beside genotype.log, and one log line.

    genotype.log itself stays two Genotype lines: the reference code's reader takes the first two
    lines of the file as the box and cls genotypes and our parser wants exactly two, so a header
    would break both. Besides the table's sum, the real FLOPs are counted on the augment head
    built from the derived genotypes (`fad.nas.flops.head_flops`).
    """

    def __init__(self, cfg: CfgNode, cost: SearchCost, num_classes: int, output_dir: str):
        self.cfg, self.cost, self.num_classes = cfg, cost, num_classes
        self.output_dir = output_dir

    def after_checkpoint(self, trainer: Trainer) -> None:
        if not is_main_process():
            return
        alphas = self.cost.tower_alphas()
        box, cls = (derive_genotype(alphas[t]) for t in ("box", "cls"))
        summary = {"iteration": trainer.iter, **self.cost.summary(box, cls)}
        flops = head_flops(self.cfg, self.num_classes, box, cls, self.cost.table.input_size)
        summary["derived_head_gflops"] = round(flops["head"] / 1e9, 6)
        summary["derived_tower_gflops"] = {t: round(flops[f"{t}_tower"] / 1e9, 6)
                                           for t in ("box", "cls")}
        atomic_write_text(os.path.join(self.output_dir, COST_FILE),
                          json.dumps(summary, indent=1) + "\n")
        unit = self.cost.table.unit
        target = f", target {self.cost.target:g} {unit}" if self.cost.active else ""
        logger.info("iteration %d head cost at %dx%d: expected %.4f %s, derived genotypes %.4f "
                    "%s%s (%s)", trainer.iter, *self.cost.table.input_size,
                    summary["expected_head"], unit, summary["derived_head_table"], unit, target,
                    os.path.join(self.output_dir, COST_FILE))
