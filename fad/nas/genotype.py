"""The Genotype type, its one-line text form and a parser that never calls eval().

Text form (one line per tower; genotype.log holds the box tower, then the cls tower):
`Genotype(normal=[[('sinSep_conv_3x3_x3', 0), ...], ...], normal_concat=range(2, 5))`
`normal[i]` lists the 2 chosen `(op_name, source)` edges of intermediate node i; source 0 = s0,
1 = s1, j >= 2 = node j-2 (so a source of node i is < i + 2); `normal_concat` = range(2, 2 + N).
"""
from __future__ import annotations

import ast
import os
from typing import NamedTuple

from fad.errors import GenotypeError
from fad.utils.io import atomic_write_text

from .primitives import NONE, SEARCHABLE

EDGES_PER_NODE = 2
MAX_LINE_CHARS = 4000


class Genotype(NamedTuple):
    """One searched cell: per intermediate node, its chosen (op_name, source_index) edges."""

    normal: list[list[tuple[str, int]]]
    normal_concat: range

    @property
    def num_nodes(self) -> int:
        return len(self.normal)


def format_genotype(genotype: Genotype) -> str:
    """The one-line text form (the format of genotype.log)."""
    nodes = ", ".join(
        "[" + ", ".join(f"({op!r}, {src})" for op, src in node) + "]" for node in genotype.normal
    )
    concat = genotype.normal_concat
    return f"Genotype(normal=[{nodes}], normal_concat=range({concat.start}, {concat.stop}))"


def validate_genotype(genotype: Genotype, where: str = "<genotype>",
                      num_nodes: int | None = None) -> Genotype:
    """Check op names, source indices, edges per node, node count and concat range."""
    n = len(genotype.normal)
    if n == 0:
        raise GenotypeError(f"{where}: the genotype has no nodes")
    if num_nodes is not None and n != num_nodes:
        raise GenotypeError(f"{where}: the genotype has {n} nodes but MODEL.FAD.NUM_NODES is "
                            f"{num_nodes}; set MODEL.FAD.NUM_NODES {n} or use a matching genotype")
    for i, node in enumerate(genotype.normal):
        if len(node) != EDGES_PER_NODE:
            raise GenotypeError(f"{where}: node {i} has {len(node)} edges, expected "
                                f"{EDGES_PER_NODE} (op_name, source) pairs")
        for op, src in node:
            if op == NONE:
                raise GenotypeError(f"{where}: node {i} picks 'none'; a derived genotype never "
                                    "does, choose one of the searchable ops")
            if op not in SEARCHABLE:
                raise GenotypeError(f"{where}: unknown op {op!r} in node {i}; valid ops: "
                                    + ", ".join(SEARCHABLE))
            if not 0 <= src < i + 2:
                raise GenotypeError(f"{where}: node {i} takes source {src}, but node {i} can only "
                                    f"read sources 0..{i + 1} (s0, s1, earlier nodes)")
    if genotype.normal_concat != range(2, n + 2):
        c = genotype.normal_concat
        raise GenotypeError(f"{where}: normal_concat=range({c.start}, {c.stop}) must be "
                            f"range(2, {n + 2}) for {n} nodes")
    return genotype


def _fail(where: str, what: str) -> GenotypeError:
    return GenotypeError(f"{where}: {what}; expected one line like "
                         "Genotype(normal=[[('std_conv_3x3', 0), ('sinSep_conv_3x3', 1)], ...], "
                         "normal_concat=range(2, 5))")


def _int(node: ast.AST, where: str, what: str) -> int:
    sign = 1
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        sign, node = -1, node.operand
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return sign * node.value
    raise _fail(where, f"{what} must be an integer literal")


def _edge(node: ast.AST, where: str) -> tuple[str, int]:
    if not (isinstance(node, ast.Tuple) and len(node.elts) == 2):
        raise _fail(where, "every edge must be an (op_name, source_index) pair")
    op, src = node.elts
    if not (isinstance(op, ast.Constant) and isinstance(op.value, str)):
        raise _fail(where, "an op name must be a quoted string")
    return op.value, _int(src, where, "a source index")


def _normal(node: ast.AST, where: str) -> list[list[tuple[str, int]]]:
    if not isinstance(node, ast.List):
        raise _fail(where, "normal= must be a list of nodes")
    nodes = []
    for item in node.elts:
        if not isinstance(item, ast.List):
            raise _fail(where, "every node must be a list of (op_name, source_index) pairs")
        nodes.append([_edge(e, where) for e in item.elts])
    return nodes


def _range(node: ast.AST, where: str) -> range:
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == "range" and len(node.args) == 2 and not node.keywords):
        raise _fail(where, "normal_concat= must be range(start, stop)")
    return range(_int(node.args[0], where, "a range bound"),
                 _int(node.args[1], where, "a range bound"))


def parse_genotype(text: str, where: str = "<string>", num_nodes: int | None = None) -> Genotype:
    """Parse and validate one text-form genotype; nothing in `text` is ever executed."""
    text = text.strip()
    if len(text) > MAX_LINE_CHARS:
        raise _fail(where, f"the line is longer than {MAX_LINE_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError:
        raise _fail(where, "not a valid Genotype(...) expression") from None
    if not (isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name)
            and tree.func.id == "Genotype"):
        raise _fail(where, "the line is not a Genotype(...) call")
    keywords = {k.arg: k.value for k in tree.keywords}
    if tree.args or set(keywords) != {"normal", "normal_concat"} or len(tree.keywords) != 2:
        raise _fail(where, "Genotype takes exactly the keywords normal= and normal_concat=")
    genotype = Genotype(_normal(keywords["normal"], where),
                        _range(keywords["normal_concat"], where))
    return validate_genotype(genotype, where, num_nodes)


def read_genotype_text(path: str) -> str:
    """The text of a genotype file, with a one-line GenotypeError when it is missing or binary."""
    if not os.path.isfile(path):
        raise GenotypeError(f"{path}: genotype file not found; pass the genotype.log written by "
                            "tools/search_net.py (or configs/fad/genotypes/fad_paper.log)")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError:
        raise GenotypeError(f"{path}: not a text file; expected two Genotype(...) lines") from None


def genotype_text(value: str) -> tuple[str, str]:
    """(text, where it came from) of a MODEL.FAD.GENOTYPE value: the value itself when it holds
    `Genotype(...)` lines, else the text of the genotype file it names; ("", "") for ""."""
    if not value.strip():
        return "", ""
    if "Genotype(" in value:
        return value, "MODEL.FAD.GENOTYPE"
    return read_genotype_text(value), value


def parse_genotype_text(text: str, where: str = "<genotype>",
                        num_nodes: int | None = None) -> tuple[Genotype, Genotype]:
    """(box, cls) genotypes of a genotype.log's text: two non-empty lines, box tower first.

    `where` names the source in errors (a file path, or e.g. the checkpoint it came from).
    """
    lines = [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    if len(lines) != 2:
        raise GenotypeError(f"{where}: expected 2 Genotype lines (box tower, then cls tower), "
                            f"found {len(lines)}")
    box, cls = (parse_genotype(line, f"{where}:{i}", num_nodes) for i, line in lines)
    return box, cls


def read_genotype_file(path: str, num_nodes: int | None = None) -> tuple[Genotype, Genotype]:
    """(box, cls) genotypes from a genotype.log file (see `parse_genotype_text`)."""
    return parse_genotype_text(read_genotype_text(path), path, num_nodes)


def write_genotype_file(path: str, box: Genotype, cls: Genotype) -> None:
    """Write genotype.log atomically: line 1 the box tower, line 2 the cls tower."""
    atomic_write_text(path, format_genotype(box) + "\n" + format_genotype(cls) + "\n")
