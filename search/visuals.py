"""What the search leaves to look at after every checkpoint (main rank), beside genotype.log:

- `alphas.png`: the softmaxed alphas, one edge x op heatmap per tower (also tensorboard image
  `search/alphas`);
- `winning_ops.png`: the top op of every edge at each checkpoint so far (tensorboard image
  `search/winning_ops`), drawn from `alpha_history.json` (the softmaxed alphas of every
  checkpoint: [{"iteration": N, "box": [[[w per op] per edge] per node], "cls": ...}]);
- `genotype_history.log`: the (box, cls) genotype pair of every checkpoint, each pair under a
  `# iteration N` line.

Every file is rewritten atomically. A resumed run first drops the entries at or after the
iteration it writes, so the histories hold one entry per checkpoint of the run as it went.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping

import numpy as np
from torch import Tensor

from fad.engine.logger import TensorboardWriter
from fad.nas.genotype import Genotype, format_genotype, parse_genotype_text
from fad.nas.plots import alpha_heatmaps, png_bytes, png_rgb, winning_ops_figure
from fad.utils.io import atomic_write_bytes, atomic_write_text

ALPHA_HISTORY = "alpha_history.json"
GENOTYPE_HISTORY = "genotype_history.log"
ALPHAS_PNG = "alphas.png"
WINNING_OPS_PNG = "winning_ops.png"
_HEADER = re.compile(r"^# iteration (\d+)\s*$")


def softmax_weights(tower_alphas: Mapping[str, list[Tensor]]) -> dict[str, list[np.ndarray]]:
    """{tower: [softmax over the ops of each edge, [i + 2, num_ops] per node]}."""
    return {tower: [a.detach().float().softmax(-1).cpu().numpy() for a in alphas]
            for tower, alphas in tower_alphas.items()}


def append_alpha_history(path: str, iteration: int,
                         weights: Mapping[str, list[np.ndarray]]) -> list[dict]:
    """Add this checkpoint's softmaxed alphas to the history at `path`; returns the history."""
    history = []
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            history = [e for e in json.load(f) if e["iteration"] < iteration]
    history.append({"iteration": iteration,
                    **{t: [np.round(w, 5).tolist() for w in ws] for t, ws in weights.items()}})
    atomic_write_text(path, json.dumps(history) + "\n")
    return history


def read_genotype_history(path: str) -> list[tuple[int, Genotype, Genotype]]:
    """(iteration, box, cls) of every checkpoint recorded in a genotype_history.log."""
    entries: list[tuple[int, list[str]]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            header = _HEADER.match(line)
            if header:
                entries.append((int(header.group(1)), []))
            elif line.strip() and entries:
                entries[-1][1].append(line)
    return [(it, *parse_genotype_text("".join(lines), f"{path} (iteration {it})"))
            for it, lines in entries]


def append_genotype_history(path: str, iteration: int, box: Genotype, cls: Genotype) -> None:
    """Add this checkpoint's genotype pair under `# iteration N` to the history at `path`."""
    kept = read_genotype_history(path) if os.path.isfile(path) else []
    pairs = [(it, b, c) for it, b, c in kept if it < iteration] + [(iteration, box, cls)]
    atomic_write_text(path, "".join(f"# iteration {it}\n{format_genotype(b)}\n"
                                    f"{format_genotype(c)}\n" for it, b, c in pairs))


def write_search_visuals(tower_alphas: Mapping[str, list[Tensor]],
                         genotypes: tuple[Genotype, Genotype], output_dir: str, iteration: int,
                         tb: TensorboardWriter | None) -> list[str]:
    """Histories, alphas.png and winning_ops.png (plus the tensorboard images when `tb` is
    given) for the checkpoint at `iteration`; returns the written paths."""
    weights = softmax_weights(tower_alphas)
    history = append_alpha_history(os.path.join(output_dir, ALPHA_HISTORY), iteration, weights)
    genotype_log = os.path.join(output_dir, GENOTYPE_HISTORY)
    append_genotype_history(genotype_log, iteration, *genotypes)
    heatmaps = alpha_heatmaps(weights, f"iteration {iteration}")
    timeline = winning_ops_figure([e["iteration"] for e in history],
                                  {t: [e[t] for e in history] for t in weights})
    paths = []
    for name, figure in ((ALPHAS_PNG, heatmaps), (WINNING_OPS_PNG, timeline)):
        data = png_bytes(figure)
        paths.append(os.path.join(output_dir, name))
        atomic_write_bytes(paths[-1], data)
        if tb is not None:
            tb.add_image(f"search/{os.path.splitext(name)[0]}", png_rgb(data), iteration)
    return [os.path.join(output_dir, ALPHA_HISTORY), genotype_log, *paths]
