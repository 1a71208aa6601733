#!/usr/bin/env bash
# The README's test command: create .venv when missing, install requirements, run the suite.
# Extra arguments go to pytest (e.g. `bash run_tests.sh tests/models -x`).
set -euo pipefail
cd "$(dirname "$0")"
source tools/setup_venv.sh
python -m pytest "$@"
