#!/usr/bin/env bash
# The README's test command: create .venv when missing, install requirements, run the suite.
# Extra arguments go to pytest (e.g. `bash run_tests.sh tests/models -x`).
set -euo pipefail
if [[ " $* " == *" --help "* || " $* " == *" -h "* ]]; then  # usage only: no venv, no output
    sed -n '2,/^set -/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0
fi
cd "$(dirname "$0")"
source tools/setup_venv.sh
python -m pytest "$@"
