"""Pictures of a search's architecture weights (matplotlib, no pyplot state, no display needed).

    fig = alpha_heatmaps({"box": box_weights, "cls": cls_weights}, "iteration 200")
    data = png_bytes(fig); image = png_rgb(data)   # PNG file bytes, HWC uint8 for tensorboard

`weights` of a tower are the softmaxed alphas, one [i + 2, num_ops] array per intermediate node
i (rows: the node's incoming edges from c_{k-2}, c_{k-1}, node 0, ...; columns: the ops of
`fad.nas.primitives`). `alpha_heatmaps` draws one edge x op heatmap per tower;
`winning_ops_figure` shows, per tower, the top op of every edge at each checkpoint.
"""
from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image

from .draw import op_label, source_name
from .primitives import primitives_for

TowerWeights = Sequence[np.ndarray]  # per node i: [i + 2, num_ops] softmaxed alphas


def edge_names(num_nodes: int) -> list[str]:
    """Row names of the plots: `node i ← source` for every edge of a cell, node by node (the
    cell inputs in matplotlib's math text, so c_{k-2} shows with a subscript)."""
    return [f"node {i} ← " + (f"${source_name(j)}$" if j < 2 else source_name(j))
            for i in range(num_nodes) for j in range(i + 2)]


def _stack(weights: TowerWeights) -> np.ndarray:
    """All edges of a tower as one [num_edges, num_ops] array."""
    return np.concatenate([np.asarray(w, dtype=np.float64) for w in weights], axis=0)


def alpha_heatmaps(towers: Mapping[str, TowerWeights], subtitle: str = "") -> Figure:
    """One edge x op heatmap of the softmaxed alphas per tower, each cell's weight written in,
    the top op of every edge in bold."""
    names = list(towers)
    stacked = [_stack(towers[t]) for t in names]
    ops = primitives_for(stacked[0].shape[1])
    rows = stacked[0].shape[0]
    fig = Figure(figsize=(1.0 + 0.75 * len(ops), 1.6 + 0.36 * rows * len(names)),
                 layout="constrained")
    axes = fig.subplots(len(names), 1, squeeze=False)[:, 0]
    for ax, tower, data in zip(axes, names, stacked):
        image = ax.imshow(data, cmap="viridis", vmin=0.0, vmax=max(float(data.max()), 1e-6),
                          aspect="auto")
        best = data.argmax(axis=1)
        for r in range(data.shape[0]):
            for c in range(data.shape[1]):
                light = data[r, c] < 0.6 * data.max()
                ax.text(c, r, f"{data[r, c]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if light else "black",
                        fontweight="bold" if c == best[r] else "normal")
        ax.set_yticks(range(data.shape[0]), edge_names(len(towers[tower])), fontsize=8)
        ax.set_xticks(range(len(ops)), [op_label(o) for o in ops], rotation=35, ha="right",
                      fontsize=8)
        ax.set_title(f"{tower} tower", fontsize=11)
        fig.colorbar(image, ax=ax, fraction=0.025, pad=0.01, label="softmax weight")
    fig.suptitle("Architecture weights (softmax over the ops of each edge)"
                 + (f" — {subtitle}" if subtitle else ""), fontsize=12)
    return fig


def winning_ops_figure(iterations: Sequence[int], history: Mapping[str, Sequence[TowerWeights]]
                       ) -> Figure:
    """Per tower, the top op (argmax of the softmaxed alphas) of every edge at each checkpoint:
    rows are edges, columns the checkpoints' iterations, colours the ops (legend below)."""
    names = list(history)
    tops = {t: np.stack([_stack(w).argmax(axis=1) for w in history[t]], axis=1) for t in names}
    num_ops = _stack(history[names[0]][0]).shape[1]
    ops = primitives_for(num_ops)
    cmap = ListedColormap((list(colormaps["tab20"].colors) * 2)[:num_ops])
    rows = next(iter(tops.values())).shape[0]
    fig = Figure(figsize=(5.5 + 0.45 * min(len(iterations), 40), 1.2 + 0.32 * rows * len(names)),
                 layout="constrained")
    axes = fig.subplots(len(names), 1, squeeze=False)[:, 0]
    for ax, tower in zip(axes, names):
        ax.imshow(tops[tower], cmap=cmap, vmin=-0.5, vmax=num_ops - 0.5, aspect="auto",
                  interpolation="nearest")
        ax.set_yticks(range(rows), edge_names(len(history[tower][0])), fontsize=8)
        step = max(1, len(iterations) // 12)
        ax.set_xticks(range(0, len(iterations), step), [str(i) for i in iterations[::step]],
                      fontsize=8)
        ax.set_xlabel("iteration", fontsize=9)
        ax.set_title(f"{tower} tower", fontsize=11)
    used = sorted({int(i) for t in tops.values() for i in np.unique(t)})
    fig.legend(handles=[Patch(color=cmap(i), label=op_label(ops[i])) for i in used],
               loc="outside right upper", title="top op", fontsize=8, frameon=False)
    fig.suptitle("Top op of each edge over the search", fontsize=12)
    return fig


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """`fig` rendered once as PNG (write it with `fad.utils.io.atomic_write_bytes`)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def png_rgb(data: bytes) -> np.ndarray:
    """PNG bytes as an RGB uint8 array [H, W, 3] (for tensorboard's add_image)."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB")).copy()
