#!/usr/bin/env bash
# Set up the environment on a fresh machine, then lint and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./ci/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy xharmonise
# Two pytest-xdist workers, one per core; loadscope keeps each module (and its module-scoped
# fixtures: simulated pairs, fitted models, a docs build) on one worker.
.venv/bin/python -m pytest -n 2 --dist loadscope --durations=25 "$@"
