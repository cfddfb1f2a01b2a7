# Sourced (from the repository root) by scripts/train_gpu.sh and scripts/train_inpaint_gpu.sh on the device: installs
# the carried wheels (.whl: diffusers, ...) into /tmp/site unless SKIP_INSTALL=1 (the packages are importable
# already, e.g. the CPU test here), and puts them and the engine on PYTHONPATH. Needs PY (the python to use).
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/BrainDiffSeg
else
  export PYTHONPATH=$PWD/BrainDiffSeg${PYTHONPATH:+:$PYTHONPATH}
fi
