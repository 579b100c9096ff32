"""Draw both towers of a genotype file: `fad-visualize genotype.log --out DIR`.

Writes DIR/box_tower.gv and DIR/cls_tower.gv (DOT source, always) and the rendered
DIR/box_tower.<fmt>, DIR/cls_tower.<fmt> when graphviz's `dot` is installed.
`--input-size H W` also prints the GFLOPs of the augment head built from the genotypes (towers,
reduce convs, predictors; FlopCounterMode, 2 per multiply-add) for one H x W image, with the
widths, cells and classes of `--config-file` (default: the paper's, 256 wide, C = 96, 2 cells).
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from fad.engine.tool import run_command, tool_parser
from fad.nas.draw import DOT_HINT, FORMATS, dot_available, draw_genotype
from fad.nas.genotype import Genotype, read_genotype_file

TOWERS = ("box", "cls")


def main(argv: Sequence[str] | None = None) -> None:
    """Parse `argv`, read the genotype file and write (and render) both diagrams."""
    parser = tool_parser(__doc__)
    parser.add_argument("genotype_file", help="genotype.log: box tower line, then cls tower line")
    parser.add_argument("--out", default=".", metavar="DIR", help="folder for the diagrams")
    parser.add_argument("--format", default="png", choices=FORMATS, help="rendered image format")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                        help="also print the head's GFLOPs for one image of this size")
    parser.add_argument("--config-file", default="", metavar="FILE",
                        help="widths, cells and MODEL.NUM_CLASSES for --input-size")
    parser.add_argument("--num-classes", type=int, default=0,
                        help="classes for --input-size (default MODEL.NUM_CLASSES, else 80)")
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
    if args.input_size:
        print_head_gflops(args, genotypes)


def print_head_gflops(args: argparse.Namespace, genotypes: tuple[Genotype, Genotype]) -> None:
    """One line: the box tower, cls tower and whole-head GFLOPs at `args.input_size`."""
    # imported here: building the head needs torchvision (~1.5 s), drawing does not
    from fad.config import load_config
    from fad.nas.flops import head_flops

    cfg = load_config(args.config_file or None, [])
    f, classes = cfg.MODEL.FAD, args.num_classes or cfg.MODEL.NUM_CLASSES or 80
    flops = head_flops(cfg, classes, *genotypes, args.input_size)
    h, w = args.input_size
    print(f"head GFLOPs at {h}x{w} ({classes} classes, towers {f.TOWER_CHANNELS} wide, "
          f"C = {f.EDGE_CHANNELS}, {f.BOX_CELLS} + {f.CLS_CELLS} cells): "
          f"box tower {flops['box_tower'] / 1e9:.4f}, cls tower {flops['cls_tower'] / 1e9:.4f}, "
          f"head {flops['head'] / 1e9:.4f}")


def run() -> None:
    """The `fad-visualize` console command (also `python tools/visualize_genotype.py`)."""
    run_command(main)
