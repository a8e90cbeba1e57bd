"""Faults: a worker lost mid-computation, and inputs that must come out untouched."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import dask
import numpy as np
import rioxarray
import xarray as xr
from conftest import local_cluster

import xharmonise
from xharmonise.simulate import simulate_pair


def _slow(block: np.ndarray) -> np.ndarray:
    # Slow blocks leave time to kill a worker while the graph is half done.
    time.sleep(0.15)
    return block


def test_worker_killed_during_predict_gives_identical_result():
    pair = simulate_pair((512, 512), seed=3, chunks=64)
    model = xharmonise.fit(pair.src, pair.ref, method="linear", patch_size=16)
    with dask.config.set(scheduler="threads"):
        expected = xharmonise.predict(pair.src, model)["prediction"].values
    # The same graph with slow reads (the values pass through): only the cluster waits.
    slow_src = pair.src.copy(data=pair.src.data.map_blocks(_slow, dtype=pair.src.dtype))
    lazy = xharmonise.predict(slow_src, model)
    with local_cluster() as client:
        future = client.compute(lazy["prediction"])
        deadline = time.monotonic() + 60
        # Kill once part of the graph's results sit in worker memory.
        while time.monotonic() < deadline and len(client.who_has()) < 8:
            time.sleep(0.05)
        victim = next(iter(client.scheduler_info()["workers"]))
        pid = client.run(os.getpid, workers=[victim])[victim]
        assert not future.done()  # the kill lands mid-computation
        os.kill(pid, signal.SIGKILL)  # the nanny restarts it; lost results are recomputed
        result = future.result(timeout=120)
    np.testing.assert_array_equal(result.values, expected)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_input_files_and_model_file_are_never_modified(tmp_path):
    pair = simulate_pair((400, 400), seed=4, ref_clouds=0.1, dtype="uint16")
    paths = pair.to_geotiff(tmp_path / "in")
    before = {name: _digest(p) for name, p in paths.items()}
    chunks = {"band": -1, "y": 128, "x": 128}
    src = rioxarray.open_rasterio(paths["src"], chunks=chunks)
    ref = rioxarray.open_rasterio(paths["ref"], chunks=chunks)
    mask = rioxarray.open_rasterio(paths["mask"], chunks=chunks).isel(band=0)
    src_attrs, ref_attrs = dict(src.attrs), dict(ref.attrs)
    model = xharmonise.fit(src, ref, method="linear", mask=mask, patch_size=16, scale=(1e-4, None))
    model_path = model.save(tmp_path / "m.safetensors")
    model_digest = _digest(model_path)
    out = xharmonise.predict(src, xharmonise.load(model_path))
    xharmonise.to_zarr(out, str(tmp_path / "out.zarr"))
    assert {name: _digest(p) for name, p in paths.items()} == before
    assert _digest(model_path) == model_digest
    assert dict(src.attrs) == src_attrs and dict(ref.attrs) == ref_attrs
    assert xr.open_zarr(tmp_path / "out.zarr")["prediction"].shape == (4, 400, 400)
