#!/usr/bin/env bash
# The smoke and launcher tests on the newest releases the lower bounds of requirements.txt allow
# (a separate .venv-latest; the default .venv keeps the locked versions of requirements-lock.txt):
#     bash tools/test_latest.sh            # then, if it passes: python tools/lock_requirements.py
# Prints the versions it tested. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
DEPS=latest source tools/setup_venv.sh
python -c "import torch, accelerate, timm, omegaconf; print('testing torch', torch.__version__, '| accelerate', accelerate.__version__, '| timm', timm.__version__, '| omegaconf', omegaconf.__version__)"
python -m pytest -q tests/test_demo_smoke.py tests/reliability/test_reliability_launcher.py \
    tests/reliability/test_reliability_leftovers.py tests/reliability/test_security_machine.py "$@"
python tools/reliability_audit.py --out /tmp/reliability_latest.md
