#!/usr/bin/env bash
# Backbone training on a lent GPU machine (issue 10 §1); run ON the device from the repository root with $OUT set,
# after scripts/gpu_prepare.sh here (it prints the device command; carry .whl and .gpu). Installs the carried wheels
# (diffusers, ...) into /tmp/site, prints the GPU, trains `train-ddpm --slices .gpu/slices.npz` from the bundled
# backbone for MINUTES, then copies into $OUT what can come back (at most 8 files of 16 MiB): the EMA weights
# (model.safetensors, 16.5 MiB, in two parts: rejoin them with `cat model.safetensors.part? > model.safetensors`;
# train.log has its sha256), config.json, loss.csv, loss_curve.png, train.log and speed.txt (steps/s, images/s).
# The optimizer state (train_state.pt, ~70 MB) cannot come back: a later run starts from the returned weights with
# INIT (--init-from), losing only the optimizer moments. Rerunning on the same warm machine resumes /tmp/run.
# CPU test: DEVICE=cpu STEPS=3 BATCH=4 OUT=/tmp/gpu_out SKIP_INSTALL=1 bash scripts/train_gpu.sh
# Environment: DEVICE (cuda), BATCH (256), MINUTES (7), STEPS (1000000: the time limit stops it), LR (2e-4),
# PRECISION (bf16), CROP (0: full 128x128 slices), SAVE_EVERY (1000), SLICES (.gpu/slices.npz),
# INIT (Resources/Models/backbone), RUN (/tmp/run), SKIP_INSTALL (1: the packages are importable already), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder whose files come back}"
DEVICE=${DEVICE:-cuda}
BATCH=${BATCH:-256}
MINUTES=${MINUTES:-7}
STEPS=${STEPS:-1000000}
LR=${LR:-2e-4}
PRECISION=${PRECISION:-bf16}
CROP=${CROP:-0}
SAVE_EVERY=${SAVE_EVERY:-1000}
SLICES=${SLICES:-.gpu/slices.npz}
INIT=${INIT:-Resources/Models/backbone}
RUN=${RUN:-/tmp/run}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
exec > >(tee "$OUT/train.log") 2>&1

collect() {  # also on failure or SIGTERM (a timeout): whatever the run saved comes back
  for f in config.json loss.csv loss_curve.png; do
    [ -f "$RUN/$f" ] && cp "$RUN/$f" "$OUT/"
  done
  if [ -f "$RUN/model.safetensors" ]; then
    split -b 15M -d -a 1 "$RUN/model.safetensors" "$OUT/model.safetensors.part"
    sha256sum "$RUN/model.safetensors" | sed 's|  .*|  model.safetensors|'
  fi
  true
}
trap collect EXIT
trap 'exit 143' TERM

. scripts/gpu_env.sh  # the carried wheels on PYTHONPATH
if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi; else echo "(no nvidia-smi)"; fi
"$PY" - <<'EOF'
import importlib.metadata as m, sys
def version(p):
    try:
        return m.version(p)
    except m.PackageNotFoundError:
        return "missing"
print("  ".join(f"{p} {version(p)}" for p in ("diffusers", "huggingface-hub", "safetensors", "numpy", "matplotlib")))
import torch, diffusers  # before the 7 minutes start: a missing package fails here
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), diffusers "
      f"{diffusers.__version__}; cuda available: {torch.cuda.is_available()}"
      + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
EOF

echo "train-ddpm: batch $BATCH, $MINUTES min, $PRECISION on $DEVICE, from $INIT, slices $SLICES -> $RUN"
"$PY" -m BrainDiffSegCLI train-ddpm --slices "$SLICES" --out "$RUN" --init-from "$INIT" --device "$DEVICE" \
  --precision "$PRECISION" --batch-size "$BATCH" --lr "$LR" --crop "$CROP" --steps "$STEPS" \
  --max-minutes "$MINUTES" --save-every "$SAVE_EVERY"

"$PY" scripts/gpu_speed.py "$RUN" "$BATCH" "$OUT/speed.txt"  # steps/s, images/s
