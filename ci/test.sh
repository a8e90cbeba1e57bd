#!/usr/bin/env bash
# Set up the environment on a fresh machine, then lint and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./ci/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# mypy (about 40 s of one core) checks beside the tests, filling the cores while pytest
# starts its workers and while the last module runs alone; its verdict counts the same.
mypy_log=$(mktemp)
.venv/bin/mypy xharmonise >"$mypy_log" 2>&1 &
mypy_pid=$!
# Two pytest-xdist workers, one per core; loadscope keeps each module (and its module-scoped
# fixtures: simulated pairs, fitted models, a docs build) on one worker, and takes modules
# in collection order (tests/conftest.py puts the longest, the paper module, first; xdist's
# default reorder by test count would start it last).
status=0
.venv/bin/python -m pytest -n 2 --dist loadscope --no-loadscope-reorder --durations=25 "$@" ||
    status=$?
if ! wait "$mypy_pid"; then
    status=1
fi
cat "$mypy_log"
rm -f "$mypy_log"
exit "$status"
