# Sourced by run_tests.sh and run_demo.sh: create and activate .venv, install requirements once.
# A stamp file holding the hash of requirements.txt makes re-runs skip pip.
VENV_DIR="${VENV_DIR:-.venv}"
if [ ! -x "$VENV_DIR/bin/python" ]; then
    echo "[setup] creating $VENV_DIR" >&2
    python3 -m venv "$VENV_DIR"
fi
# shellcheck disable=SC1091
source "$VENV_DIR/bin/activate"
_req_hash=$(cat requirements.txt requirements-dev.txt pyproject.toml 2>/dev/null | sha256sum | cut -d' ' -f1)
if [ "$(cat "$VENV_DIR/.requirements.sha256" 2>/dev/null)" != "$_req_hash" ]; then
    echo "[setup] installing requirements into $VENV_DIR (first run takes ~2 minutes)" >&2
    python -m pip install --quiet --upgrade pip
    python -m pip install --quiet -r requirements.txt -r requirements-dev.txt
    # The one mechanism that makes the packages importable from every command (pyproject.toml).
    python -m pip install --quiet --no-deps -e .
    echo "$_req_hash" > "$VENV_DIR/.requirements.sha256"
fi
