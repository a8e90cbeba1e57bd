#!/usr/bin/env bash
# Fill .gpu_wheels/ with what benchmarks/gpu.sh installs on the borrowed GPU machine.
#
# That machine (docs/gpu.md) has Python 3.12 with PyTorch (CUDA), NumPy, SciPy, xarray,
# pandas, scikit-image, safetensors, fsspec, tqdm, matplotlib, click, attrs, certifi,
# pyparsing, PyYAML, toolz, cloudpickle, packaging, typing-extensions and psutil, but not
# the packages below, and it cannot download anything. This script downloads them here as
# manylinux x86-64 CPython 3.12 wheels, pinned to the versions installed in .venv (the
# ones the tests pass with), without their dependencies (each missing one is named), plus
# a wheel of xharmonise itself (for its metadata: gpu.sh runs the working tree's code).
#
# Only what `import xharmonise`, simulate_pair, fit, predict and to_zarr import is
# carried, plus distributed (tests/conftest.py imports it, so tests/test_cuda.py needs
# it; about 1.5 MB with tornado, zict and tblib); not s3fs or the docs' and CLI's extras.
# rasterio is most of the size (its wheel bundles GDAL), but rioxarray, and through it
# `import xharmonise`, cannot run without it.
#
# Everything that travels to the machine (the working tree plus this folder) must stay
# under 64 MiB; the script prints the folder's size and fails when it alone passes 60 MiB.
#
# Usage: benchmarks/gpu_wheels.sh [folder]    (default .gpu_wheels, git-ignored)
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.gpu_wheels}
PY=${PYTHON:-.venv/bin/python}

# The distributions benchmarks/gpu.py needs that the machine lacks.
MISSING=(
    dask partd locket                       # dask.array
    zarr numcodecs donfig google-crc32c     # Zarr v3 output
    rioxarray rasterio affine cligj click-plugins pyproj
    odc-geo shapely cachetools
    distributed tornado zict tblib          # tests/conftest.py (LocalCluster fixtures)
)

pins=()
for name in "${MISSING[@]}"; do
    version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
    pins+=("$name==$version")
done

rm -rf "$DEST"
mkdir -p "$DEST"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$DEST" "${pins[@]}"
# xharmonise's own (pure Python) wheel, built from the working tree without network.
"$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$DEST" .

ls -l "$DEST"
bytes=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
echo "wheels: $(ls "$DEST"/*.whl | wc -l) files, $((bytes / 1024 / 1024)) MiB ($bytes bytes)"
if [ "$bytes" -gt $((60 * 1024 * 1024)) ]; then
    echo "too large: the working tree and the wheels together must stay under 64 MiB" >&2
    exit 1
fi
