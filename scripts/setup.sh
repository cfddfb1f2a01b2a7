#!/usr/bin/env bash
# Creates .venv and installs BrainDiffSeg with pinned dependencies. Idempotent (a stamp file per profile); safe to
# run again.
#   bash scripts/setup.sh demo   what `braindiffseg demo` / `propagate` need: the engine's dependencies only
#   bash scripts/setup.sh test   (default) everything the test suite needs: the baselines, test, slicer and web
#                                extras, and - when missing - the Debian packages of the browser annotator and its
#                                end-to-end test: chromium (driven headless by Playwright) and Mesa's EGL
#                                (trame-slicer renders off-screen through EGL)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
profile=${1:-test}
case "$profile" in
  demo) extras="" ;;
  test) extras="[baselines,test,slicer,web]" ;;
  *) echo "usage: bash scripts/setup.sh [demo|test]" >&2; exit 2 ;;
esac

if [ "$profile" = test ] && command -v dpkg-query >/dev/null 2>&1; then
  debian_packages=(chromium libegl1 libegl-mesa0 libgl1-mesa-dri)
  missing=()
  for p in "${debian_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
      echo "setup: installing Debian packages: ${missing[*]}"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
      echo "setup: WARNING: missing Debian packages (${missing[*]}); run as root or install them:" \
           "the browser end-to-end tests will be skipped" >&2
    fi
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate

fresh() { [ -f "$1" ] && [ ! pyproject.toml -nt "$1" ]; }
stamp=.venv/.braindiffseg-$profile
# the test set-up installs everything the demo needs too
if fresh "$stamp" || { [ "$profile" = demo ] && fresh .venv/.braindiffseg-test; }; then
  exit 0
fi
python -m pip install -q --upgrade pip
# torch first and pinned: the CPU wheel here; nothing later may pull another (CUDA) build
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".$extras"
touch "$stamp"
