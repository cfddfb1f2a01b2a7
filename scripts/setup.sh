#!/usr/bin/env bash
# Creates .venv and installs BrainDiffSeg with pinned dependencies. Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.braindiffseg-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  python -m pip install -q --upgrade pip
  # torch first and pinned: the CPU wheel here; nothing later may pull another (CUDA) build
  python -m pip install -q torch==2.13.0
  python -m pip install -q -e ".[baselines,test,slicer]"
  touch "$stamp"
fi
