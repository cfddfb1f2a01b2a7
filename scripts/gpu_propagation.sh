#!/usr/bin/env bash
# Issue 25's GPU targets (first result <= 2 s, update <= 0.5 s on one H100), measured through the same benchmarks as
# on the CPU; run ON the device from the repository root with $OUT set, after `PACK=case bash scripts/gpu_prepare.sh`
# here (it copies the case into .gpu-case/ with the nibabel wheel, and the other wheels into .whl/; carry both).
# The device has neither ITK nor the data: Grow from seeds is not run there (`--no-growcut`; its ratio is a CPU
# figure anyway). Writes into $OUT:
#   propagation.log                     everything printed, the device and torch first;
#   update_warm/update.{json,md}        `benchmark update --warm-up`: one untimed propagation first, so the timed first
#                                       run is that of a running engine service (backbone loaded, CUDA started);
#   update_cold/update.{json,md}        the same without the warm-up: a fresh process's first run;
#   speed/speed.{json,md}               `benchmark speed --modes first`: the first result from scratch, k = 3.
# About 2-3 minutes on an H100 after the wheels' install. CPU test (the same commands on this machine's CPU):
#   DEVICE=cpu SKIP_INSTALL=1 OUT=/tmp/gpu_propagation bash scripts/gpu_propagation.sh
# Environment: DEVICE (cuda), CASE (.gpu-case/BraTS2021_00006), UPDATE_ARGS (more flags for both update runs, e.g.
# the test's "--preset quick ..."; none: the product default), SKIP_INSTALL (1: the packages are importable already),
# PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder whose files come back}"
DEVICE=${DEVICE:-cuda}
CASE=${CASE:-.gpu-case/BraTS2021_00006}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
exec > >(tee "$OUT/propagation.log") 2>&1

[ -d "$CASE" ] || { echo "gpu_propagation: no case at $CASE (run PACK=case bash scripts/gpu_prepare.sh here and carry .gpu-case)" >&2; exit 2; }
EXTRA_WHEELS=$(ls .gpu-case/*.whl 2>/dev/null || true)
. scripts/gpu_env.sh
export PYTHONUNBUFFERED=1
"$PY" - "$DEVICE" <<'EOF'
import platform, sys
import torch
print(f"python {platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
if sys.argv[1] == "cuda":
    if not torch.cuda.is_available():
        sys.exit("gpu_propagation: torch sees no CUDA device")
    print("device:", torch.cuda.get_device_name(0))
EOF

status=0
bench() {  # one benchmark; a failure is reported and the next one still runs
  echo "== braindiffseg $*"
  "$PY" -m BrainDiffSegCLI "$@" || { echo "== failed with status $?"; status=1; }
}
# shellcheck disable=SC2086 # UPDATE_ARGS: flags, space-separated
bench benchmark update --case "$CASE" --device "$DEVICE" --no-growcut --warm-up --out "$OUT/update_warm" ${UPDATE_ARGS:-}
# shellcheck disable=SC2086
bench benchmark update --case "$CASE" --device "$DEVICE" --no-growcut --out "$OUT/update_cold" ${UPDATE_ARGS:-}
bench benchmark speed --case "$CASE" --devices "$DEVICE" --modes first --k 3 --out "$OUT/speed"
exit $status
