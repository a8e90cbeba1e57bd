"""The linear slice on a real aerial (5 m) / Sentinel-2 (10 m) pair from ../shared/data."""

import numpy as np
import pytest
import rioxarray
from conftest import shared_data

import xharmonise


@pytest.mark.parametrize("strip", [1, 2])
def test_linear_reduces_10m_rmse_on_every_band(strip):
    folder = shared_data("ngi_s2")
    s2 = rioxarray.open_rasterio(
        folder / "sentinel2_b432_byte.tif", chunks={"band": -1, "y": 512, "x": 512}
    )
    aerial = rioxarray.open_rasterio(
        folder / f"ngi_rgb_byte_{strip}.tif", chunks={"band": -1, "y": 512, "x": 512}
    )
    # Both are display-stretched 8-bit: scale to [0, 1] so they compare as reflectances.
    model = xharmonise.fit(aerial, s2, method="linear", scale=1 / 255, progress=False)
    assert model.factor == 2
    assert model.ref_bands == ("B4", "B3", "B2")
    rmse = model.metrics.sel(metric="rmse")
    assert (rmse.sel(stage="linear") < rmse.sel(stage="initial")).all()
    assert model.patches["test"] >= 10
    out = xharmonise.predict(aerial, model)
    assert out["prediction"].shape == aerial.shape
    assert np.isfinite(out["prediction"].isel(x=slice(300, 340), y=slice(600, 640)).values).all()
