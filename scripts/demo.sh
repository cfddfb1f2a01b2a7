#!/usr/bin/env bash
# Set-up + main job: the patient-level demo on BraTS2021_00006 (3 annotated slices simulated from its ground truth).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec braindiffseg demo "$@"
