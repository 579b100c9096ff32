#!/usr/bin/env bash
# The fault campaign of docs/RELIABILITY.md with its full counts: 30 random kill -9 times per
# tool (train, search; 1 thread, no loader workers), 10 with 2 loader workers, 9 kills inside a
# checkpoint save per tool; each followed by the same command with --resume and compared with an
# uninterrupted run; 5 kill -9 of a random torchrun rank at a random instant per tool (2 gloo
# processes, --max-restarts 2), 5 two-agent (--nnodes 2) trainings, one run of every bad-data
# case. Prints one table. Extra arguments go to scripts/fault_campaign.py (e.g.
# --jobs 4 on a machine with more cores, --only search).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/fault_campaign.py --trials 30 --worker-trials 10 --save-trials 9 \
    --torchrun-trials 5 --bad-data-trials 1 "$@"
