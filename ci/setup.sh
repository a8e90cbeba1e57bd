#!/usr/bin/env bash
# Create .venv (idempotent) and install xharmonise with its test and docs extras (the test
# suite builds the documentation and runs its examples).
# torch is pinned: an unpinned torch resolves to a multi-GB CUDA build, while torch==2.13.0
# is a CPU wheel available locally on the project machines (pip's find-links).
# The installer is uv, given pip's configuration (find-links, extra indexes, constraints):
# it resolves the same versions as pip in about 10 s instead of 2.5 min, which is a quarter
# of CI's time budget. pip is the fallback where uv cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH="torch==2.13.0"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.xharmonise-installed
if [ -f "$stamp" ] && [ ! pyproject.toml -nt "$stamp" ] && [ ! ci/setup.sh -nt "$stamp" ]; then
    exit 0
fi
log=.venv/setup.log
echo "setting up .venv (log: $log)"

pip_setting() {
    .venv/bin/python -m pip config get "global.$1" 2>/dev/null || true
}

with_uv() {
    .venv/bin/python -m pip install -q "uv==0.13.9" || return 1
    local args=() item
    for item in ${PIP_FIND_LINKS:-$(pip_setting find-links)}; do args+=(--find-links "$item"); done
    for item in ${PIP_EXTRA_INDEX_URL:-$(pip_setting extra-index-url)}; do
        args+=(--extra-index-url "$item")
    done
    for item in ${PIP_CONSTRAINT:-$(pip_setting constraint)}; do args+=(--constraint "$item"); done
    # unsafe-best-match: take the newest version across PyPI and the extra indexes, as pip
    # does (uv's default stops at the first index that has the package).
    .venv/bin/uv pip install --python .venv/bin/python --index-strategy unsafe-best-match \
        "${args[@]}" "$TORCH" -e ".[test,docs]"
}

with_pip() {
    .venv/bin/python -m pip install --upgrade pip &&
        .venv/bin/python -m pip install "$TORCH" &&
        .venv/bin/python -m pip install -e ".[test,docs]"
}

if ! with_uv >"$log" 2>&1; then
    echo "uv set-up failed, falling back to pip (log: $log)"
    with_pip >>"$log" 2>&1 || { tail -n 40 "$log"; echo "set-up failed: see $log" >&2; exit 1; }
fi
touch "$stamp"
