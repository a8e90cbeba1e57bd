#!/usr/bin/env bash
# Set up the environment on a fresh machine, then lint and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./ci/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy xharmonise
.venv/bin/python -m pytest --durations=25 "$@"
