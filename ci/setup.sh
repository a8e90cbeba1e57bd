#!/usr/bin/env bash
# Create .venv (idempotent) and install xharmonise with its test and docs extras (the test
# suite builds the documentation and runs its examples).
# torch is pinned and installed first: an unpinned torch resolves to a multi-GB CUDA build,
# while torch==2.13.0 is a CPU wheel available locally on the project machines.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.xharmonise-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ ci/setup.sh -nt "$stamp" ]; then
    log=.venv/setup.log
    echo "setting up .venv (log: $log)"
    {
        .venv/bin/python -m pip install --upgrade pip &&
        .venv/bin/python -m pip install "torch==2.13.0" &&
        .venv/bin/python -m pip install -e ".[test,docs]"
    } >"$log" 2>&1 || { tail -n 40 "$log"; echo "set-up failed: see $log" >&2; exit 1; }
    touch "$stamp"
fi
