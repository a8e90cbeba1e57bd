#!/usr/bin/env bash
# Set up and run benchmarks/gpu.py on the borrowed GPU machine, or here on the CPU.
#
#   benchmarks/gpu.sh                      # on the GPU machine: writes results/gpu.json
#   benchmarks/gpu.sh --device cpu --tiny  # here: tiny, writes results/gpu_cpu_tiny.json
#
# Arguments go to gpu.py. The Python is $PYTHON, else .venv/bin/python when there is one,
# else python3 (the GPU machine's, which holds its CUDA PyTorch). When that Python cannot
# import what gpu.py needs, the wheels in $XH_WHEELS (default .gpu_wheels, filled here by
# benchmarks/gpu_wheels.sh and carried to the machine) are installed without their
# dependencies and without an index into a folder of their own ($XH_SITE), put on
# PYTHONPATH after the working tree: the machine's own packages, PyTorch first, are
# never touched, and the code that runs is the working tree's (the xharmonise wheel only
# provides its metadata). When $OUT is set (the device tool's folder for files to bring
# back) the log is written there and the JSON copied there.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WHEELS=${XH_WHEELS:-.gpu_wheels}
SITE=${XH_SITE:-/tmp/xharmonise-site}
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1
start=$(date +%s)

needs='import dask.array, zarr, rioxarray, odc.geo, torch, xharmonise'
if ! "$PYTHON" -c "$needs" 2>/dev/null; then
    if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        echo "gpu.sh: $PYTHON cannot run '$needs' and $WHEELS holds no wheels:" \
            "run benchmarks/gpu_wheels.sh where a package index is reachable" >&2
        exit 2
    fi
    echo "gpu.sh: installing $(ls "$WHEELS"/*.whl | wc -l) wheels into $SITE"
    "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir \
        --disable-pip-version-check --upgrade --target "$SITE" "$WHEELS"/*.whl
    export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
    "$PYTHON" -c "$needs"
fi
"$PYTHON" -c 'import torch, xharmonise; print("gpu.sh: torch", torch.__version__,
    "cuda", torch.cuda.is_available(), "xharmonise from", xharmonise.__file__)'
echo "gpu.sh: set-up took $(($(date +%s) - start)) s"

# gpu.py rewrites its JSON after each section; its own time limit (default: what is left
# of 8 minutes, less 20 s) makes sure this script still gets to copy what it measured.
limit=${XH_TIMEOUT:-$((460 - ($(date +%s) - start)))}
log=${OUT:-/tmp}/gpu.log
stamp=$(mktemp)
status=0
timeout "$limit" "$PYTHON" benchmarks/gpu.py "$@" 2>&1 | tee "$log" || status=$?
echo "gpu.sh: done in $(($(date +%s) - start)) s, status $status"
if [ "$status" = 124 ]; then echo "gpu.sh: gpu.py ran out of its $limit s" >&2; fi
if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
    # What this run wrote: gpu.json, or a tiny run's file.
    find benchmarks/results -name 'gpu*.json' -newer "$stamp" -exec cp {} "$OUT"/ \;
fi
rm -f "$stamp"
exit "$status"
