"""Convert a released checkpoint of the original code into ours.

    fad-convert KIND --config-file CFG IN.pth OUT.pth [KEY VALUE ...]

KIND: deformable_detr (fundamentalvision/Deformable-DETR), sparse_detr (kakaobrain/sparse-detr),
sai (SAI SparseResNet Faster R-CNN, MMDetection v0.6) or asag (iSEE-Laboratory/ASAG). OUT.pth
holds {"model": state_dict} and loads strictly into the model that CFG builds: use it as
MODEL.WEIGHT in test_net.py or as a fine-tuning start in train_net.py. With --backbone-only
(sai), OUT.pth holds only the SparseResNet body, for MODEL.BACKBONE.PRETRAINED of another
detector (e.g. configs/sai/fcos_*).
The converter refuses tensors left over on either side, shape mismatches and settings that the
checkpoint contradicts (queries, levels, two-stage, box refinement, heads), naming them.
See docs/model_zoo.md for the released models and the config of each.
"""
from __future__ import annotations

from collections.abc import Sequence

from fad.config import load_config
from fad.convert import CONVERTERS, Options, convert_checkpoint
from fad.engine.launch import parse_args
from fad.engine.tool import run_command, tool_parser
from fad.utils.io import atomic_torch_save


def main(argv: Sequence[str] | None = None) -> None:
    """Parse `argv`, convert IN to OUT and print what was decided or could not be mapped."""
    parser = tool_parser(__doc__)
    parser.add_argument("kind", choices=CONVERTERS.names(), metavar="KIND",
                        help=f"release format: {', '.join(CONVERTERS.names())}")
    parser.add_argument("input", metavar="IN.pth", help="the released checkpoint")
    parser.add_argument("output", metavar="OUT.pth", help="where to write ours")
    parser.add_argument("--config-file", default="", metavar="FILE",
                        help="yaml config of the model to convert into")
    parser.add_argument("opts", nargs="*", default=[], metavar="KEY VALUE",
                        help="config overrides, e.g. MODEL.DETR.NUM_QUERIES 300")
    parser.add_argument("--backbone-only", action="store_true",
                        help="sai: keep only the SparseResNet body (MODEL.BACKBONE.PRETRAINED)")
    parser.add_argument("--class-logits", choices=("auto", "coco91", "as_is"), default="auto",
                        help="DETR class heads: auto treats 91 logits as COCO category ids and "
                             "keeps the 80 used ones; as_is keeps every logit")
    parser.add_argument("--trust-file", action="store_true",
                        help="unpickle objects beyond tensors (only for files you trust)")
    args = parse_args(parser, argv)
    cfg = load_config(args.config_file, args.opts)
    options = Options(class_logits=args.class_logits, backbone_only=args.backbone_only)
    result = convert_checkpoint(args.kind, cfg, args.input, options, args.trust_file)
    atomic_torch_save({"model": result.state}, args.output)
    for note in result.notes:
        print(f"note: {note}")
    what = "backbone body" if args.backbone_only else f"{result.num_classes} classes"
    print(f"wrote {args.output}: {len(result.state)} tensors ({what}) for "
          f"{args.config_file or 'the default config'}")


def run() -> None:
    """The `fad-convert` console command (also `python tools/convert_checkpoint.py`)."""
    run_command(main)
