#!/usr/bin/env bash
# Inpainting-DDPM training on a lent GPU machine (issue 11); run ON the device from the repository root with $OUT set,
# after scripts/gpu_prepare.sh here (it packs .gpu-inpaint/crops.npz and prints the device command; carry .whl and
# .gpu-inpaint).
# Installs the carried wheels (diffusers, ...) into /tmp/site, prints the GPU, trains `train-inpaint --crops
# .gpu-inpaint/crops.npz` from the bundled inpainting model (Resources/Models/inpaint: 2D, 64-px crops, context-normalised)
# for MINUTES, then copies into $OUT what can come back (at most 8 files of 16 MiB): the EMA weights
# (model.safetensors, 2.8 MiB for the bundled architecture; split into 15 MiB parts only when larger: rejoin with
# `cat model.safetensors.part? > model.safetensors`; train.log ends with its sha256), config.json, masks.json,
# loss.csv, loss_curve.png, train.log and speed.txt (steps/s, images/s). Also on failure or a timeout (SIGTERM).
# The optimizer state (train_state.pt) does not come back: a later run starts from the returned weights with INIT
# (--init-from), losing only the optimizer moments. Rerunning on the same warm machine resumes $RUN.
# The pack (gpu_prepare.sh's default, measured 2026-12-04): 6,893 64-px crops of 240 healthy masks (16 of each of the
# 15 tuning cases, as the bundled model trained on), 5.26 MiB; gpu_prepare.sh's header has smaller sizes.
# PSEUDO3D=1 trains the pseudo-3D variant (stacks of DEPTH adjacent slices; the pack keeps whole masks, so the stacks
# are there) from the 2D bundled model; BATCH then counts slices (BATCH / DEPTH stacks).
# CPU test: DEVICE=cpu STEPS=3 BATCH=4 OUT=/tmp/x SKIP_INSTALL=1 bash scripts/train_inpaint_gpu.sh
# Environment: DEVICE (cuda), BATCH (512), MINUTES (6), STEPS (1000000: the time limit stops it), LR (2e-4),
# PRECISION (bf16), SAVE_EVERY (2000), CROPS (.gpu-inpaint/crops.npz), INIT (Resources/Models/inpaint), PSEUDO3D (0),
# DEPTH (5), RUN (/tmp/inpaint_run), SKIP_INSTALL (1: the packages are importable already), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder whose files come back}"
DEVICE=${DEVICE:-cuda}
BATCH=${BATCH:-512}
MINUTES=${MINUTES:-6}
STEPS=${STEPS:-1000000}
LR=${LR:-2e-4}
PRECISION=${PRECISION:-bf16}
SAVE_EVERY=${SAVE_EVERY:-2000}
CROPS=${CROPS:-.gpu-inpaint/crops.npz}
INIT=${INIT:-Resources/Models/inpaint}
PSEUDO3D=${PSEUDO3D:-0}
DEPTH=${DEPTH:-5}
RUN=${RUN:-/tmp/inpaint_run}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
exec > >(tee "$OUT/train.log") 2>&1

collect() {  # also on failure or SIGTERM (a timeout): whatever the run saved comes back
  for f in config.json masks.json loss.csv loss_curve.png; do
    [ -f "$RUN/$f" ] && cp "$RUN/$f" "$OUT/"
  done
  if [ -f "$RUN/model.safetensors" ]; then
    if [ "$(stat -c %s "$RUN/model.safetensors")" -gt $((15 * 1048576)) ]; then
      split -b 15M -d -a 1 "$RUN/model.safetensors" "$OUT/model.safetensors.part"
    else
      cp "$RUN/model.safetensors" "$OUT/"
    fi
    sha256sum "$RUN/model.safetensors" | sed 's|  .*|  model.safetensors|'
  fi
  true
}
trap collect EXIT
trap 'exit 143' TERM

. scripts/gpu_env.sh  # the carried wheels on PYTHONPATH
export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}  # the reseeded loop asks for deterministic ops
if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi; else echo "(no nvidia-smi)"; fi
"$PY" - "$CROPS" <<'EOF'
import importlib.metadata as m, sys
def version(p):
    try:
        return m.version(p)
    except m.PackageNotFoundError:
        return "missing"
print("  ".join(f"{p} {version(p)}" for p in ("diffusers", "huggingface-hub", "safetensors", "numpy", "scipy",
                                             "matplotlib")))
import lzma, scipy, torch, diffusers  # before the minutes start: a missing package fails here
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), diffusers "
      f"{diffusers.__version__}; cuda available: {torch.cuda.is_available()}"
      + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
from BrainDiffSegLib.training.inpaint import packed_crop_info
print(f"crop pack {sys.argv[1]}: {packed_crop_info(sys.argv[1])}"[:400])
EOF

extra=()
[ "$PSEUDO3D" = 1 ] && extra=(--pseudo3d --depth "$DEPTH")
echo "train-inpaint: batch $BATCH, $MINUTES min, $PRECISION on $DEVICE, from $INIT, crops $CROPS ${extra[*]} -> $RUN"
"$PY" -m BrainDiffSegCLI train-inpaint --crops "$CROPS" --out "$RUN" --init-from "$INIT" --device "$DEVICE" \
  --precision "$PRECISION" --batch-size "$BATCH" --lr "$LR" --steps "$STEPS" --max-minutes "$MINUTES" \
  --save-every "$SAVE_EVERY" "${extra[@]}"

"$PY" scripts/gpu_speed.py "$RUN" "$BATCH" "$OUT/speed.txt"  # steps/s, images/s
