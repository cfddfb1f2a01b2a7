#!/usr/bin/env bash
# Set-up (the test extras and the browser: scripts/setup.sh test) + the test suite (what CI runs: .ci/run).
# The suite includes Testing/Python/test_install.py: a non-editable `pip install .` of the project, run outside the
# source tree. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
. .venv/bin/activate
exec python -m pytest "$@"
