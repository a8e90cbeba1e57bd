"""The examples run as plain scripts from the repository root, small, warning-free."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rioxarray
import xarray as xr
from conftest import dashboard_port_taken, shared_data

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

# The examples must be as warning-free as the library: run them with warnings as errors,
# except what pyproject.toml also ignores, for the reasons given there: two odc-geo
# deprecations, and rasterio's own suppressed NotGeoreferencedWarning that leaks out of
# rasterio.warp.reproject when another thread leaves a `warnings.catch_warnings()` block
# at the wrong moment (threaded Dask, as in these scripts).
_WARNINGS = [
    "-W",
    "error",
    "-W",
    "ignore:Use `@` matmul instead of `*` mul operator:PendingDeprecationWarning",
    "-W",
    "ignore:The 'shapely.ops.transform()' function is deprecated:DeprecationWarning",
    "-W",
    "ignore:Dataset has no geotransform, gcps, or rpcs:UserWarning:rasterio.warp",
]


def _run(script: str, *args: str, timeout: float = 600) -> tuple[str, float]:
    """Run ``examples/<script>`` as ``python examples/<script> ...`` from the repo root."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, *_WARNINGS, f"examples/{script}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout, seconds


def test_every_example_is_tested():
    tested = {"quickstart.py", "aerial_s2.py", "cluster_inference.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


def test_quickstart(tmp_path):
    out, _ = _run("quickstart.py", "--size", "400", "--out", str(tmp_path / "q.zarr"))
    assert "B8" in out and "wrote" in out
    back = xr.open_zarr(tmp_path / "q.zarr")
    assert back["prediction"].shape == (4, 400, 400)
    assert np.isfinite(back["prediction"].values).mean() > 0.99
    assert back.rio.crs.to_epsg() == 32631


def test_aerial_s2(tmp_path):
    data = shared_data("ngi_s2")
    store = tmp_path / "aerial.zarr"
    out, _ = _run(
        "aerial_s2.py",
        *("--size", "300", "--patch-size", "16", "--calibnet-iterations", "3"),
        *("--data", str(data), "--out", str(store)),
    )
    # Both fits print their metrics; the linear baseline beats the untouched aerial.
    assert "Harmoniser linear" in out and "Harmoniser calibnet" in out
    assert "rmse:" in out and "r2:" in out
    back = xr.open_zarr(store)
    assert back["prediction"].shape == (3, 300, 300)
    assert list(back["band"].values) == ["B4", "B3", "B2"]
    # The centre of strip 1 is valid aerial data: predicted everywhere but a few holes.
    assert np.isfinite(back["prediction"].values).mean() > 0.9
    s2 = rioxarray.open_rasterio(data / "sentinel2_b432_byte.tif")
    assert back.rio.crs == s2.rio.crs
    assert back.rio.resolution() == pytest.approx((5.0, -5.0))


def test_aerial_s2_without_data_says_where_it_lives(tmp_path):
    proc = subprocess.run(
        [sys.executable, "examples/aerial_s2.py", "--data", str(tmp_path / "absent")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "../shared/data" in proc.stderr


def test_cluster_inference(tmp_path):
    store = tmp_path / "cluster.zarr"
    # Another cluster's web server on the default port must not stop this one.
    with dashboard_port_taken():
        out, _ = _run(
            "cluster_inference.py",
            *("--size", "300", "--chunk", "128", "--workers", "2", "--out", str(store)),
        )
    assert "cluster: 2 workers" in out and "read back" in out
    back = xr.open_zarr(store)
    assert back["prediction"].shape == (4, 300, 300)
    assert back.rio.crs.to_epsg() == 32631
    # One shard per source chunk: 128-pixel chunks along y and x.
    assert back["prediction"].encoding["shards"][1:] == (128, 128)
    assert np.isfinite(back["prediction"].values).mean() > 0.99
