import numpy as np
import pytest
import rioxarray  # noqa: F401  (.rio on the reopened store)
import xarray as xr
import zarr

import xharmonise
from xharmonise.errors import StoreExistsError
from xharmonise.simulate import simulate_pair


@pytest.fixture(scope="module")
def prediction():
    pair = simulate_pair((600, 600), seed=5, nodata_border=20, chunks=256)
    model = xharmonise.fit(pair.src, pair.ref, method="linear", patch_size=16)
    return pair, xharmonise.predict(pair.src, model)


def test_round_trip_keeps_values_crs_and_transform(prediction, tmp_path):
    pair, out = prediction
    path = tmp_path / "out.zarr"
    xharmonise.to_zarr(out, str(path))
    back = xr.open_zarr(path)
    assert back["prediction"].dtype == np.float32
    np.testing.assert_array_equal(back["prediction"].values, out["prediction"].values)
    assert np.isnan(back["prediction"].values[:, :20]).all()
    assert back.rio.crs == pair.src.rio.crs
    assert back["prediction"].rio.transform() == pair.src.rio.transform()
    assert list(back["band"].values) == ["B2", "B3", "B4", "B8"]


def test_store_is_v3_sharded_and_compressed(prediction, tmp_path):
    _, out = prediction
    path = tmp_path / "out.zarr"
    xharmonise.to_zarr(out, str(path))
    arr = zarr.open_group(path, mode="r")["prediction"]
    assert arr.metadata.zarr_format == 3
    assert arr.shards == (4, 256, 256)
    assert arr.chunks == (1, 256, 256)
    names = [c.to_dict()["name"] for c in arr.metadata.codecs]
    assert names == ["sharding_indexed"]
    inner = arr.metadata.codecs[0].codecs
    assert "zstd" in [c.to_dict()["name"] for c in inner]


def test_existing_store_is_refused_unless_mode_w(prediction, tmp_path):
    _, out = prediction
    path = str(tmp_path / "out.zarr")
    xharmonise.to_zarr(out, path)
    with pytest.raises(StoreExistsError, match="mode='w'"):
        xharmonise.to_zarr(out, path)
    doubled = out * 2
    doubled.attrs = out.attrs
    xharmonise.to_zarr(doubled, path, mode="w")
    back = xr.open_zarr(path)
    np.testing.assert_array_equal(back["prediction"].values, 2 * out["prediction"].values)


def test_memory_url_and_numpy_input():
    ds = xr.Dataset({"prediction": (("band", "y", "x"), np.ones((2, 30, 40), np.float32))})
    xharmonise.to_zarr(ds, "memory://xh-test.zarr")
    back = xr.open_zarr("memory://xh-test.zarr")
    np.testing.assert_array_equal(back["prediction"].values, 1)
