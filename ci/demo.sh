#!/usr/bin/env bash
# The main job: simulate a Pleiades / Sentinel-2 pair, fit, predict and write a Zarr store.
set -euo pipefail
cd "$(dirname "$0")/.."
./ci/setup.sh
.venv/bin/python -m xharmonise.demo "$@"
