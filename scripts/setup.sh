#!/usr/bin/env bash
# Set up a fresh machine: graphviz's `dot` (apt), a venv in .venv, fad + test and export deps (editable).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v dot >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq graphviz >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test,export]"
echo "fad is installed in $(pwd)/.venv"
