#!/usr/bin/env bash
# Create .venv (idempotent) and install xharmonise with its test extra.
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
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet "torch==2.13.0"
    .venv/bin/python -m pip install --quiet -e ".[test]"
    touch "$stamp"
fi
