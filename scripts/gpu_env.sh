# Sourced (from the repository root) by scripts/train_gpu.sh, scripts/train_inpaint_gpu.sh and
# scripts/gpu_propagation.sh on the device: installs the carried wheels (.whl: diffusers, ...; and $EXTRA_WHEELS, more
# wheel paths) into /tmp/site unless SKIP_INSTALL=1 (the packages are importable already, e.g. the CPU test here), and
# puts them and the engine on PYTHONPATH. Needs PY (the python to use).
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  # shellcheck disable=SC2086 # EXTRA_WHEELS: more wheel paths, space-separated (e.g. .gpu-case's nibabel)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    ${EXTRA_WHEELS:-}
  export PYTHONPATH=/tmp/site:$PWD/BrainDiffSeg
else
  export PYTHONPATH=$PWD/BrainDiffSeg${PYTHONPATH:+:$PYTHONPATH}
fi
