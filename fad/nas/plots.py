"""Pictures of a search's architecture weights (matplotlib, no pyplot state, no display needed).

    fig = alpha_heatmaps({"box": box_weights, "cls": cls_weights}, "iteration 200")
    data = png_bytes(fig); image = png_rgb(data)   # PNG file bytes, HWC uint8 for tensorboard

`weights` of a tower are the softmaxed alphas, one [i + 2, num_ops] array per intermediate node
i (rows: the node's incoming edges from c_{k-2}, c_{k-1}, node 0, ...; columns: the ops of
`fad.nas.primitives`). `alpha_heatmaps` draws one edge x op heatmap per tower, coloured by the
margin over the uniform weight 1/num_ops (the alphas start uniform, and after a short search
every weight is within a few % of it); `winning_ops_figure` shows, per tower, the top op of
every edge at each checkpoint on an iteration axis.
"""
from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
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


def uniform_norm(data: np.ndarray) -> Normalize:
    """Colour scale of the heatmap `data` [edges, ops]: centred on the uniform weight 1/ops and
    symmetric, reaching the largest distance from it (so small margins still get colour)."""
    uniform = 1.0 / data.shape[1]
    reach = max(float(np.abs(data - uniform).max()), 1e-6)
    return Normalize(vmin=uniform - reach, vmax=uniform + reach)


def alpha_heatmaps(towers: Mapping[str, TowerWeights], subtitle: str = "") -> Figure:
    """One edge x op heatmap of the softmaxed alphas per tower on a diverging colour map centred
    on the uniform weight 1/ops (red above it, blue below, `uniform_norm`); each cell reads its
    weight over the uniform one (1.00 = uniform, 2.00 = twice), the top op of every edge in
    bold."""
    names = list(towers)
    stacked = [_stack(towers[t]) for t in names]
    ops = primitives_for(stacked[0].shape[1])
    rows = stacked[0].shape[0]
    fig = Figure(figsize=(1.0 + 0.75 * len(ops), 1.6 + 0.36 * rows * len(names)),
                 layout="constrained")
    axes = fig.subplots(len(names), 1, squeeze=False)[:, 0]
    for ax, tower, data in zip(axes, names, stacked):
        norm = uniform_norm(data)
        image = ax.imshow(data, cmap="RdBu_r", norm=norm, aspect="auto")
        best = data.argmax(axis=1)
        # the numbers sit inside the axes: kept out of the constrained layout, which then
        # measures no text per cell in each pass (the same picture, ~10 % less rendering time)
        for r in range(data.shape[0]):
            for c in range(data.shape[1]):
                strong = abs(float(norm(data[r, c])) - 0.5) > 0.35
                ax.text(c, r, f"{data[r, c] * len(ops):.2f}", ha="center", va="center",
                        fontsize=7, color="white" if strong else "black",
                        fontweight="bold" if c == best[r] else "normal", in_layout=False)
        ax.set_yticks(range(data.shape[0]), edge_names(len(towers[tower])), fontsize=8)
        ax.set_xticks(range(len(ops)), [op_label(o) for o in ops], rotation=35, ha="right",
                      fontsize=8)
        ax.set_title(f"{tower} tower", fontsize=11)
        fig.colorbar(image, ax=ax, fraction=0.025, pad=0.01,
                     label=f"softmax weight (white: uniform 1/{len(ops)})")
    fig.suptitle("Architecture weights over uniform (softmax over the ops of each edge "
                 f"x {len(ops)})" + (f" — {subtitle}" if subtitle else ""), fontsize=12)
    return fig


def winning_ops_figure(iterations: Sequence[int], history: Mapping[str, Sequence[TowerWeights]]
                       ) -> Figure:
    """Per tower, the top op (argmax of the softmaxed alphas) of every edge at each checkpoint:
    rows are edges, colours the ops (legend beside); the x axis is the iteration, each
    checkpoint's column spanning from the previous checkpoint (0 for the first) to its own
    iteration, so checkpoints 20, 22 and 40 give columns 20, 2 and 18 iterations wide.
    `iterations` must increase."""
    names = list(history)
    tops = {t: np.stack([_stack(w).argmax(axis=1) for w in history[t]], axis=1) for t in names}
    num_ops = _stack(history[names[0]][0]).shape[1]
    ops = primitives_for(num_ops)
    cmap = ListedColormap((list(colormaps["tab20"].colors) * 2)[:num_ops])
    rows = next(iter(tops.values())).shape[0]
    fig = Figure(figsize=(5.5 + 0.45 * min(len(iterations), 40), 1.2 + 0.32 * rows * len(names)),
                 layout="constrained")
    axes = fig.subplots(len(names), 1, squeeze=False)[:, 0]
    x_edges = np.concatenate([[min(0, iterations[0] - 1)], np.asarray(iterations, dtype=float)])
    for ax, tower in zip(axes, names):
        ax.pcolormesh(x_edges, np.arange(rows + 1) - 0.5, tops[tower], cmap=cmap, vmin=-0.5,
                      vmax=num_ops - 0.5)
        ax.set_ylim(rows - 0.5, -0.5)
        ax.set_yticks(range(rows), edge_names(len(history[tower][0])), fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=12, integer=True))
        ax.tick_params(axis="x", labelsize=8)
        ax.set_xlabel("iteration (each column ends at its checkpoint)", fontsize=9)
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
