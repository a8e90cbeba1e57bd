#!/usr/bin/env bash
# The main job: simulate a realistic Pleiades / Sentinel-2 pair (TOA, unmasked clouds, a
# shift), fit BCNet with the variance head, write demo_out/harmonised.zarr, the model and
# demo_out/report.html. Options: .venv/bin/xharmonise demo --help
set -euo pipefail
cd "$(dirname "$0")/.."
./ci/setup.sh
.venv/bin/xharmonise demo "$@"
