"""Draw both towers of a genotype file: `fad-visualize genotype.log --out DIR`.

Writes DIR/box_tower.gv and DIR/cls_tower.gv (DOT source, always) and the rendered
DIR/box_tower.<fmt>, DIR/cls_tower.<fmt> when graphviz's `dot` is installed.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

from fad.engine.launch import run_tool, tool_parser
from fad.nas.draw import DOT_HINT, FORMATS, dot_available, draw_genotype
from fad.nas.genotype import read_genotype_file

TOWERS = ("box", "cls")


def main(argv: Sequence[str] | None = None) -> None:
    """Parse `argv`, read the genotype file and write (and render) both diagrams."""
    parser = tool_parser(__doc__)
    parser.add_argument("genotype_file", help="genotype.log: box tower line, then cls tower line")
    parser.add_argument("--out", default=".", metavar="DIR", help="folder for the diagrams")
    parser.add_argument("--format", default="png", choices=FORMATS, help="rendered image format")
    args = parser.parse_args(argv)
    genotypes = read_genotype_file(args.genotype_file)
    name = os.path.basename(args.genotype_file)
    for tower, genotype in zip(TOWERS, genotypes):
        stem = os.path.join(args.out, f"{tower}_tower")
        for path in draw_genotype(genotype, stem, f"FAD cell of the {tower} tower", args.format,
                                  subtitle=name):
            print(path)
    if not dot_available():
        print(DOT_HINT)


def run() -> None:
    """The `fad-visualize` console command (also `python tools/visualize_genotype.py`)."""
    run_tool(main)
