#!/usr/bin/env bash
# Set up the environment on a fresh machine, then lint and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./ci/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy xharmonise
# Two pytest-xdist workers, one per core; loadscope keeps each module (and its module-scoped
# fixtures: simulated pairs, fitted models, a docs build) on one worker, and takes modules
# in collection order (tests/conftest.py puts the longest, the paper module, first; xdist's
# default reorder by test count would start it last).
.venv/bin/python -m pytest -n 2 --dist loadscope --no-loadscope-reorder --durations=25 "$@"
