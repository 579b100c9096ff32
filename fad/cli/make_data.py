"""Write the synthetic shapes dataset as VOC (DIR/synthetic_voc) and COCO (DIR/synthetic_coco).

    fad-make-data --out datasets --num-train 300 --num-val 60 --seed 0

The synthetic_* catalog names read exactly these folders when DATASETS.ROOT is DIR.
"""
from __future__ import annotations

from fad.data.synthetic import (
    DEFAULT_MAX_SIZE,
    DEFAULT_MIN_SIZE,
    DEFAULT_NUM_TRAIN,
    DEFAULT_NUM_VAL,
    DEFAULT_SEED,
    generate,
)
from fad.engine.tool import run_command, tool_parser


def main(argv: list[str] | None = None) -> None:
    """Parse `argv` and write both copies of the dataset."""
    parser = tool_parser(__doc__)
    parser.add_argument("--out", required=True, help="folder to write into (use DATASETS.ROOT)")
    parser.add_argument("--num-train", type=int, default=DEFAULT_NUM_TRAIN, help="training images")
    parser.add_argument("--num-val", type=int, default=DEFAULT_NUM_VAL, help="validation images")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="same seed, same bytes")
    parser.add_argument("--min-size", type=int, default=DEFAULT_MIN_SIZE, help="smallest side")
    parser.add_argument("--max-size", type=int, default=DEFAULT_MAX_SIZE, help="largest image side")
    args = parser.parse_args(argv)
    if args.num_train < 0 or args.num_val < 0:
        parser.error("--num-train and --num-val must be >= 0")
    if not 16 <= args.min_size <= args.max_size:
        parser.error("need 16 <= --min-size <= --max-size")
    voc, coco = generate(args.out, args.num_train, args.num_val, args.seed, args.min_size,
                         args.max_size)
    print(f"wrote {args.num_train} train + {args.num_val} val images to {voc} (VOC) and "
          f"{coco} (COCO)")


def run() -> None:
    """The `fad-make-data` console command (also `python tools/make_synthetic_data.py`)."""
    run_command(main)
