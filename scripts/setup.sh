#!/usr/bin/env bash
# Creates .venv and installs BrainDiffSeg with pinned dependencies. Idempotent; safe to run again.
# Also installs, when missing, the Debian packages the browser annotator and its end-to-end test need:
# chromium (driven headless by Playwright) and Mesa's EGL (trame-slicer renders off-screen through EGL).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

debian_packages=(chromium libegl1 libegl-mesa0 libgl1-mesa-dri)
if command -v dpkg-query >/dev/null 2>&1; then
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
stamp=.venv/.braindiffseg-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  python -m pip install -q --upgrade pip
  # torch first and pinned: the CPU wheel here; nothing later may pull another (CUDA) build
  python -m pip install -q torch==2.13.0
  python -m pip install -q -e ".[baselines,test,slicer,web]"
  touch "$stamp"
fi
