#!/usr/bin/env bash
# Set-up (only what the demo needs: the engine's dependencies) + the patient-level demo on BraTS2021_00006
# (3 annotated slices simulated from its ground truth). Extra arguments go to `braindiffseg demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh demo
. .venv/bin/activate
exec braindiffseg demo "$@"
