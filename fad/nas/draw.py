"""Graphviz diagrams of a genotype's cell: DOT source always, PNG/SVG when `dot` is installed.

Left-to-right digraph; inputs `c_{k-2}`, `c_{k-1}`, intermediate nodes `0..N-1`, output `c_{k}`;
one edge per chosen (op, source) labelled with the op name, plain edges from every node to
`c_{k}`; the caption names the tower (and the search iteration).
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess

import graphviz

from fad.utils.io import atomic_write_text

from .genotype import Genotype

FORMATS = ("png", "svg")
DOT_HINT = ("graphviz's `dot` program was not found, so only the DOT source (.gv) was written; "
            "install it (apt-get install graphviz | conda install graphviz | brew install "
            "graphviz) or render later with `dot -Tpng FILE.gv -o FILE.png`")


def genotype_digraph(genotype: Genotype, caption: str) -> graphviz.Digraph:
    """The diagram of one cell as a graphviz Digraph."""
    g = graphviz.Digraph(
        graph_attr={"rankdir": "LR", "label": caption, "labelloc": "b", "fontsize": "20"},
        node_attr={"style": "filled", "shape": "rect", "align": "center", "fontsize": "20",
                   "height": "0.5", "width": "0.5", "penwidth": "2", "fontname": "times"},
        edge_attr={"fontsize": "16", "fontname": "times"},
    )
    inputs = ["c_{k-2}", "c_{k-1}"]
    for name in inputs:
        g.node(name, fillcolor="darkseagreen2")
    for i in range(len(genotype.normal)):
        g.node(str(i), fillcolor="lightblue")
    for i, node in enumerate(genotype.normal):
        for op, src in node:
            g.edge(inputs[src] if src < 2 else str(src - 2), str(i), label=op, fillcolor="gray")
    g.node("c_{k}", fillcolor="palegoldenrod")
    for i in range(len(genotype.normal)):
        g.edge(str(i), "c_{k}", fillcolor="gray")
    return g


def dot_available() -> bool:
    """Whether graphviz's `dot` binary is on PATH (needed for PNG/SVG only)."""
    return shutil.which("dot") is not None


def draw_genotype(genotype: Genotype, stem: str, caption: str, fmt: str = "png") -> list[str]:
    """Write `stem.gv` (always) and `stem.<fmt>` (when `dot` exists); return the written paths.

    Both files are replaced atomically. Without `dot` the hint is logged on the "fad" logger.
    """
    if fmt not in FORMATS:
        raise ValueError(f"diagram format must be one of {FORMATS}, got {fmt!r}")
    source = stem + ".gv"
    atomic_write_text(source, genotype_digraph(genotype, caption).source)
    if not dot_available():
        logging.getLogger("fad").warning(DOT_HINT)
        return [source]
    image = f"{stem}.{fmt}"
    tmp = f"{image}.tmp"
    result = subprocess.run(["dot", f"-T{fmt}", source, "-o", tmp], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{source}: dot failed to render {fmt}: {result.stderr.strip()}")
    os.replace(tmp, image)
    return [source, image]
