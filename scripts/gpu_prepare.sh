#!/usr/bin/env bash
# Prepares a backbone training run on a lent GPU machine (issue 10 §1); run HERE, on the CPU machine, before the GPU
# session. The device has torch but neither diffusers nor nibabel, no internet and none of the data; only the
# repository working tree (64 MiB in all, the repository is ~39 MB of it) plus the ignored folders named in `carry`
# travel. This script
#   1. downloads the wheels the device lacks into .whl/: diffusers (the version pinned in pyproject.toml) and
#      importlib_metadata with its dependencies zipp and lazy-importer (pure Python, cp312-compatible);
#   2. packs the backbone's training slices (the cases below $BRAINDIFFSEG_DATA, as `train-ddpm --data` reads them)
#      into .gpu/slices.npz with `braindiffseg pack-slices`: uint8-quantised and compressed, every $EVERY-th slice.
#      All 4,788 slices would be ~103 MB even so; every 8th (~600 slices from all 96 cases) fits the size budget
#      (adjacent slices are much alike; a later session can pack another subset with OFFSET, e.g. OFFSET=4);
#   3. prints the device command for scripts/train_gpu.sh (the `run` tool: command and carry list).
# Both folders are listed in .git/info/exclude (the device tool carries only excluded folders). Environment:
# BRAINDIFFSEG_DATA (../shared/data), EVERY (8), OFFSET (0), LIMIT_MIB (20: .whl + .gpu), CACHE (runs/slice-cache:
# the float16 slice-set cache, ~0.6 GB; rebuilt in ~1 min when absent).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && . .venv/bin/activate
DATA=${BRAINDIFFSEG_DATA:-../shared/data}
EVERY=${EVERY:-8}
OFFSET=${OFFSET:-0}
LIMIT_MIB=${LIMIT_MIB:-20}
CACHE=${CACHE:-runs/slice-cache}

exclude=.git/info/exclude
mkdir -p "$(dirname "$exclude")"
for p in /.whl/ /.gpu/; do
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
PYTHONPATH=$PWD/BrainDiffSeg python3 -m BrainDiffSegCLI pack-slices --data "$DATA" --out .gpu/slices.npz \
  --every "$EVERY" --offset "$OFFSET" --cache "$CACHE"

du -sh .whl/* .gpu/*
total=$(du -cb .whl .gpu | tail -1 | cut -f1)
tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 du -cb 2>/dev/null |
  tail -1 | cut -f1)
python3 -c "print(f'.whl + .gpu: {$total / 2**20:.1f} MiB; with the working tree: \
{($total + $tree) / 2**20:.1f} MiB (the device takes 64 MiB)')"
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
  echo "gpu_prepare: more than $LIMIT_MIB MiB; pack fewer slices (a larger EVERY)" >&2
  exit 1
fi

# 3. the device command
cat <<'EOF'

Device command (the `run` tool, from the repository root; MINUTES of training, ~1 min more for start-up and saving):
  command:   MINUTES=7 BATCH=256 bash scripts/train_gpu.sh
  carry:     [".whl", ".gpu"]
  timeout_s: 560
Returns model.safetensors.part0 and .part1 (the EMA weights, 16.5 MiB, over the 16 MiB a file may have: rejoin with
`cat model.safetensors.part? > model.safetensors`; train.log ends with its sha256), config.json, loss.csv,
loss_curve.png, train.log and speed.txt (steps/s, images/s). The optimizer state is too large to come back: a later
GPU run continues from the returned weights (--init-from), losing only the optimizer moments (AdamW re-warms in 200
steps): copy model.safetensors and config.json over Resources/Models/backbone (the working tree does not grow) or
into a carried, excluded folder, and set INIT to it.
EOF
