#!/usr/bin/env bash
# The main job on the built-in synthetic data, on the CPU in 3-7 minutes:
# synthetic data -> FAD search -> genotype.log + diagrams -> augment training -> COCO table.
# The stages (each a fad-* command, printed before it runs; `--dry-run` lists them) run from one
# Python process that imports torch once: scripts/demo.py. Outputs under $OUT (output/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/demo.py "$@"
