"""Graphviz diagrams of a genotype's cell: DOT source always, PNG/SVG when `dot` is installed.

Left-to-right digraph titled at the top. The cell inputs c_{k-2}, c_{k-1} (drawn with real
subscripts), intermediate nodes `node 0..N-1` and the output c_k (the concat of the nodes) are
boxes; every chosen (op, source) edge goes through its own small op node, so no label sits on a
line that other lines cross. Op nodes read e.g. "3×3 sep conv ×2 / + dil-2 sep 3×3" and carry the
genotype name (`sinSep_conv_3x3_x2+dil_conv_3x3`) as their tooltip (SVG) and DOT comment.
"""
from __future__ import annotations

import html
import logging
import os
import shutil
import subprocess

import graphviz

from fad.utils.io import atomic_write_text

from .genotype import Genotype
from .primitives import NONE, op_spec

FORMATS = ("png", "svg")
DOT_HINT = ("graphviz's `dot` program was not found, so only the DOT source (.gv) was written; "
            "install it (apt-get install graphviz | conda install graphviz | brew install "
            "graphviz) or render later with `dot -Tpng FILE.gv -o FILE.png`")
FONT = "Helvetica"
_FAMILY_NAMES = {"std": "3×3 conv", "sinSep": "3×3 sep conv"}


def op_label_lines(name: str) -> list[str]:
    """A primitive's name in words, one line per unit kind: `std_conv_3x3_x2+dil_conv_3x3` ->
    ["3×3 conv ×2", "+ dil-2 sep 3×3"]; `none` -> ["none"]."""
    if name == NONE:
        return [NONE]
    spec = op_spec(name)
    lines = [_FAMILY_NAMES[spec.family] + (f" ×{spec.depth}" if spec.depth > 1 else "")]
    if spec.dilation:
        lines.append(f"+ dil-{spec.dilation} sep 3×3")
    return lines


def op_label(name: str) -> str:
    """`op_label_lines` on one line (axis labels of the alpha plots)."""
    return " ".join(op_label_lines(name))


def source_name(src: int) -> str:
    """Plain-text name of source index `src` of a cell node: c_{k-2}, c_{k-1}, node j."""
    return ("c_{k-2}", "c_{k-1}")[src] if src < 2 else f"node {src - 2}"


def _html(text: str, sub: str = "") -> str:
    """A graphviz HTML-like label: escaped `text` with an optional subscript."""
    return "<" + html.escape(text) + (f"<SUB>{html.escape(sub)}</SUB>" if sub else "") + ">"


def genotype_digraph(genotype: Genotype, title: str, subtitle: str = "") -> graphviz.Digraph:
    """The diagram of one cell as a graphviz Digraph, `title` (and `subtitle`) on top."""
    heading = f"<B>{html.escape(title)}</B>"
    if subtitle:
        heading += f'<BR/><FONT POINT-SIZE="14">{html.escape(subtitle)}</FONT>'
    g = graphviz.Digraph(
        graph_attr={"rankdir": "LR", "label": f"<{heading}>", "labelloc": "t", "fontsize": "20",
                    "fontname": FONT, "nodesep": "0.25", "ranksep": "0.45"},
        node_attr={"style": "filled", "shape": "box", "fontsize": "16", "penwidth": "1.5",
                   "fontname": FONT, "height": "0.45"},
        edge_attr={"arrowsize": "0.7", "color": "gray30"},
    )
    inputs = ["c_k-2", "c_k-1"]
    for name, sub in zip(inputs, ("k-2", "k-1")):
        g.node(name, _html("c", sub), fillcolor="darkseagreen2")
    nodes = [f"node_{i}" for i in range(genotype.num_nodes)]
    for i, name in enumerate(nodes):
        g.node(name, f"node {i}", fillcolor="lightblue")
    for i, node in enumerate(genotype.normal):
        for op, src in node:
            op_node = f"op_{i}_{src}"
            lines = "<BR/>".join(html.escape(line) for line in op_label_lines(op))
            g.node(op_node, f"<{lines}>", shape="box", style="rounded,filled", fillcolor="white",
                   fontsize="12", penwidth="1", height="0.3", tooltip=op, comment=op)
            g.edge(inputs[src] if src < 2 else nodes[src - 2], op_node)
            g.edge(op_node, nodes[i])
    g.node("c_k", _html("c", "k"), fillcolor="palegoldenrod")
    for name in nodes:
        g.edge(name, "c_k", style="dashed")
    return g


def dot_available() -> bool:
    """Whether graphviz's `dot` binary is on PATH (needed for PNG/SVG only)."""
    return shutil.which("dot") is not None


def draw_genotype(genotype: Genotype, stem: str, title: str, fmt: str = "png",
                  subtitle: str = "") -> list[str]:
    """Write `stem.gv` (always) and `stem.<fmt>` (when `dot` exists); return the written paths.

    Both files are replaced atomically. Without `dot` the hint is logged on the "fad" logger.
    """
    if fmt not in FORMATS:
        raise ValueError(f"diagram format must be one of {FORMATS}, got {fmt!r}")
    source = stem + ".gv"
    atomic_write_text(source, genotype_digraph(genotype, title, subtitle).source)
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
