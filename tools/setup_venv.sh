# Sourced by run_tests.sh and run_demo.sh (or run `bash tools/setup_venv.sh` once): create and
# activate the virtual environment and install the requirements once. A stamp file holding the
# hash of the requirement files makes re-runs skip pip.
#   default       .venv, requirements.txt + requirements-dev.txt under requirements-lock.txt: the
#                 versions the suite last passed with (install your CUDA torch build first, see
#                 the README's Install section; the lock pins its version number only).
#   DEPS=latest   .venv-latest (VENV_DIR overrides), the newest releases the lower bounds allow;
#                 tools/test_latest.sh runs the smoke and launcher tests there.
VENV_DIR="${VENV_DIR:-$([ "${DEPS:-locked}" = latest ] && echo .venv-latest || echo .venv)}"
case "${DEPS:-locked}" in
    locked) _constraints=(-c requirements-lock.txt) ;;
    latest) _constraints=() ;;
    *) echo "error: DEPS must be 'locked' (default) or 'latest', got '${DEPS}'" >&2; return 2 2>/dev/null || exit 2 ;;
esac
if [ ! -x "$VENV_DIR/bin/python" ]; then
    echo "[setup] creating $VENV_DIR" >&2
    python3 -m venv "$VENV_DIR"
fi
# shellcheck disable=SC1091
source "$VENV_DIR/bin/activate"
_req_hash=$(cat requirements.txt requirements-dev.txt pyproject.toml 2>/dev/null | sha256sum | cut -d' ' -f1)
if [ "${#_constraints[@]}" -gt 0 ]; then
    _req_hash=$(cat requirements-lock.txt | sha256sum | cut -d' ' -f1)-$_req_hash
fi
if [ "$(cat "$VENV_DIR/.requirements.sha256" 2>/dev/null)" != "$_req_hash" ]; then
    echo "[setup] installing requirements into $VENV_DIR (first run takes ~2 minutes)" >&2
    python -m pip install --quiet --upgrade pip
    python -m pip install --quiet -r requirements.txt -r requirements-dev.txt "${_constraints[@]}"
    # The one mechanism that makes the packages importable from every command (pyproject.toml).
    python -m pip install --quiet --no-deps -e .
    echo "$_req_hash" > "$VENV_DIR/.requirements.sha256"
fi
