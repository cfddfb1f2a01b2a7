#!/usr/bin/env bash
# Prepares the backbone and inpainting training runs on a lent GPU machine (issues 10 §1 and 11); run HERE, on the CPU
# machine, before the GPU session. The device has torch but neither diffusers nor nibabel, no internet and none of
# the data; only the repository working tree (64 MiB in all, the repository is ~39 MB of it) plus the ignored folders
# named in `carry` travel. This script
#   1. downloads the wheels the device lacks into .whl/: diffusers (the version pinned in pyproject.toml) and
#      importlib_metadata with its dependencies zipp and lazy-importer (pure Python, cp312-compatible);
#   2. packs the backbone's training slices (the cases below $BRAINDIFFSEG_DATA, as `train-ddpm --data` reads them)
#      into .gpu/slices.npz with `braindiffseg pack-slices`: uint8-quantised and compressed, every $EVERY-th slice.
#      All 4,788 slices would be ~103 MB even so; every 8th (~600 slices from all 96 cases) fits the size budget
#      (adjacent slices are much alike; a later session can pack another subset with OFFSET, e.g. OFFSET=4);
#   3. packs the inpainting DDPM's training crops (issue 11: 64-px crops of T1 slices around healthy masks of the
#      tuning split, cut like the bundled Resources/Models/inpaint) into .gpu-inpaint/crops.npz with `braindiffseg
#      pack-crops`: uint8, xz-compressed, whole masks (so pseudo-3D stacks too), MASKS_PER_CASE masks of each of the
#      15 tuning cases. Measured 2026-12-04 (pack-crops, ~25 s, 2 min for 16): 2 masks/case: 880 crops, 1.41 MiB;
#      3: 1,352 crops, 2.02 MiB; 4: 1,806 crops, 2.57 MiB; 16 (the default: the bundled model's 240 masks, 6,893
#      crops): 5.26 MiB. It has its own folder because the two runs are separate device sessions, each carrying
#      only what it reads: the backbone run .whl + .gpu (18.3 MiB), the inpainting run .whl + .gpu-inpaint
#      (11.4 MiB); a few hundred crops at batch 512 for minutes would only be memorised;
#   4. with PACK=case (not in the default), copies the case of issue 25's GPU targets ($CASE, BraTS2021_00006, 9.4 MiB)
#      into .gpu-case/ with the wheel of nibabel (which reads it; the device lacks it) for scripts/gpu_propagation.sh;
#   5. prints the device commands for scripts/train_gpu.sh, scripts/train_inpaint_gpu.sh and scripts/gpu_propagation.sh
#      (the `run` tool).
# Both folders are listed in .git/info/exclude (the device tool carries only excluded folders). Environment:
# BRAINDIFFSEG_DATA (../shared/data), EVERY (8), OFFSET (0), LIMIT_MIB (20: what each run carries), CACHE
# (runs/slice-cache: the float16 slice-set cache, ~0.6 GB; rebuilt in ~1 min when absent), MASKS_PER_CASE (16), CROP_CACHE
# (runs/inpaint-crop-cache: build_crops' float16 cache; ~25 s to rebuild), PACK ("slices crops": what to (re)pack;
# e.g. PACK=crops keeps the present .gpu/slices.npz; PACK=case for the propagation benchmarks only), CASE
# ($DATA/brats2021/BraTS2021_00006).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && . .venv/bin/activate
DATA=${BRAINDIFFSEG_DATA:-../shared/data}
EVERY=${EVERY:-8}
OFFSET=${OFFSET:-0}
LIMIT_MIB=${LIMIT_MIB:-20}
CACHE=${CACHE:-runs/slice-cache}
MASKS_PER_CASE=${MASKS_PER_CASE:-16}
CROP_CACHE=${CROP_CACHE:-runs/inpaint-crop-cache}
PACK=${PACK:-slices crops}
CASE=${CASE:-$DATA/brats2021/BraTS2021_00006}

exclude=.git/info/exclude
mkdir -p "$(dirname "$exclude")"
for p in /.whl/ /.gpu/ /.gpu-inpaint/ /.gpu-case/; do
  grep -qxF "$p" "$exclude" 2>/dev/null || echo "$p" >>"$exclude"
done

# 1. wheels: the same versions as this venv where it has them (those the tests ran with)
pin() { python3 -c "import importlib.metadata as m; print('$1==' + m.version('$1'))" 2>/dev/null || echo "$1"; }
diffusers=$(sed -n 's/.*"diffusers==\([^"]*\)".*/\1/p' pyproject.toml)
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d .whl "diffusers==$diffusers" "$(pin importlib_metadata)" "$(pin zipp)" "$(pin lazy-importer)"
echo "diffusers' requirements (the device has the others):"
unzip -p .whl/diffusers-*.whl '*/METADATA' | grep ^Requires-Dist | grep -v "extra ==" | sed 's/^/  /'

# 2. the training slices
if [[ " $PACK " == *" slices "* ]]; then
  PYTHONPATH=$PWD/BrainDiffSeg python3 -m BrainDiffSegCLI pack-slices --data "$DATA" --out .gpu/slices.npz \
    --every "$EVERY" --offset "$OFFSET" --cache "$CACHE"
fi

# 3. the inpainting crops (the tuning split of $DATA, as `train-inpaint` trains on by default)
if [[ " $PACK " == *" crops "* ]]; then
  BRAINDIFFSEG_DATA=$DATA PYTHONPATH=$PWD/BrainDiffSeg python3 -m BrainDiffSegCLI pack-crops --out .gpu-inpaint/crops.npz \
    --masks-per-case "$MASKS_PER_CASE" --like Resources/Models/inpaint --cache "$CROP_CACHE"
fi

# 4. the case of the propagation benchmarks, and nibabel to read it
if [[ " $PACK " == *" case "* ]]; then
  [ -d "$CASE" ] || { echo "gpu_prepare: no case folder at $CASE" >&2; exit 1; }
  rm -rf .gpu-case && mkdir -p .gpu-case
  cp -r "$CASE" .gpu-case/
  chmod -R u+w .gpu-case
  nibabel=$(sed -n 's/.*"nibabel==\([^"]*\)".*/\1/p' pyproject.toml)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform any -d .gpu-case "nibabel==$nibabel"
fi

du -sh .whl/* .gpu/* .gpu-inpaint/* .gpu-case/* 2>/dev/null || true
tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 du -cb 2>/dev/null |
  tail -1 | cut -f1)
status=0
for run in .gpu .gpu-inpaint .gpu-case; do  # each device run carries .whl and its own folder
  [ -d "$run" ] || continue
  total=$(du -cb .whl "$run" | tail -1 | cut -f1)
  python3 -c "print(f'.whl + $run: {$total / 2**20:.1f} MiB; with the working tree: \
{($total + $tree) / 2**20:.1f} MiB (the device takes 64 MiB)')"
  if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
    echo "gpu_prepare: .whl + $run is more than $LIMIT_MIB MiB; pack fewer slices (a larger EVERY) or crops" \
      "(MASKS_PER_CASE)" >&2
    status=1
  fi
  if [ $((total + tree)) -gt $((63 * 1048576)) ]; then  # a MiB of margin for what the session adds before the call
    echo "gpu_prepare: .whl + $run with the working tree is more than the device's 64 MiB (less a MiB of margin):" \
      "the device would refuse the call; pack less, or make the working tree smaller" >&2
    status=1
  fi
done
[ "$status" = 0 ] || exit 1

# 5. the device commands
cat <<'EOF'

Device command for the backbone (the `run` tool, from the repository root; MINUTES of training, ~1 min more for
start-up and saving):
  command:   MINUTES=7 BATCH=256 bash scripts/train_gpu.sh
  carry:     [".whl", ".gpu"]
  timeout_s: 560
Returns model.safetensors.part0 and .part1 (the EMA weights, 16.5 MiB, over the 16 MiB a file may have: rejoin with
`cat model.safetensors.part? > model.safetensors`; train.log ends with its sha256), config.json, loss.csv,
loss_curve.png, train.log and speed.txt (steps/s, images/s). The optimizer state is too large to come back: a later
GPU run continues from the returned weights (--init-from), losing only the optimizer moments (AdamW re-warms in 200
steps): copy model.safetensors and config.json over Resources/Models/backbone (the working tree does not grow) or
into a carried, excluded folder, and set INIT to it.

Device command for the inpainting DDPM (issue 11; one session's 15 device minutes do not hold both runs):
  command:   MINUTES=6 BATCH=512 bash scripts/train_inpaint_gpu.sh
  carry:     [".whl", ".gpu-inpaint"]
  timeout_s: 480
Returns model.safetensors (the EMA weights, 2.8 MiB), config.json, masks.json, loss.csv, loss_curve.png, train.log
(ends with the weights' sha256) and speed.txt. To keep them, copy model.safetensors, config.json, loss.csv,
loss_curve.png and masks.json over Resources/Models/inpaint (after checking them: docs/results/inpainting); a later
GPU run starts from them (INIT, --init-from). PSEUDO3D=1 trains the pseudo-3D variant from the 2D model.

Device command for issue 25's GPU targets (after PACK=case; on the machine the training left warm, or alone):
  command:   bash scripts/gpu_propagation.sh
  carry:     [".whl", ".gpu-case"]
  timeout_s: 300
Returns propagation.log, update_warm/ and update_cold/ (`benchmark update --device cuda --no-growcut`, with and
without an untimed warm-up run) and speed/ (`benchmark speed --modes first --devices cuda`): copy them under
docs/results/speed/gpu/ with the device's name from the log.
EOF
