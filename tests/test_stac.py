"""Offline STAC: a static catalogue of local COGs, loaded back with odc-stac.

The catalogue is written by :mod:`stac_catalog` from simulated Sentinel-2 references, so
every loaded DN can be checked against the reflectance it came from. These tests pin
what odc-stac hands the library (dims, dtype, attrs, grid, dates), which is what
``fit`` has to accept for issue #14.
"""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr

pytest.importorskip("odc.stac")

import odc.geo.xr  # noqa: F401 -- registers the .odc accessor used below
import rasterio.errors
from stac_catalog import (
    SCL_CLOUD_HIGH,
    SCL_VEGETATION,
    load,
    read_items,
    to_dn,
    write_catalog,
)

import xharmonise
from xharmonise.simulate import simulate_pair

L2A = ["B02", "B03", "B04", "B08"]
# Three overpasses over the simulated scene (lon 3 E, so solar time is UTC + 12 min).
DATES = np.array(
    ["2022-06-15T10:56:21", "2022-06-20T10:56:19", "2022-07-05T10:56:25"], dtype="datetime64[ns]"
)


def _stack(refs: list[xr.DataArray], dates: np.ndarray) -> xr.DataArray:
    """(time, band, y, x) from (band, y, x) arrays on one grid."""
    return xr.concat(refs, dim=xr.DataArray(dates, dims="time", name="time"))


@pytest.fixture(scope="module")
def series() -> tuple[xr.DataArray, xr.DataArray]:
    """Three dates of a 56 x 56 reference (10 m), cloud masks, and no-data in date 2."""
    pairs = [
        simulate_pair((200, 200), seed=seed, ref_clouds=clouds)
        for seed, clouds in [(0, 0.0), (1, 0.3), (2, 0.1)]
    ]
    ref = _stack([p.ref for p in pairs], DATES)
    # A no-data strip, as at a swath edge: it must come back as DN 0.
    ref[1, :, :, :7] = np.nan
    return ref, _stack([p.mask for p in pairs], DATES)


@pytest.fixture(scope="module")
def catalogue(series, tmp_path_factory) -> Path:
    ref, mask = series
    return write_catalog(tmp_path_factory.mktemp("stac"), ref, mask=mask)


def test_catalogue_round_trips_dn_exactly_on_the_written_grid(series, catalogue):
    ref, _ = series
    ds = load(catalogue, bands=L2A)
    assert list(ds.data_vars) == L2A
    for i, name in enumerate(L2A):
        assert ds[name].dims == ("time", "y", "x")
        assert ds[name].dtype == np.uint16  # DN as stored: odc-stac does not rescale
        np.testing.assert_array_equal(ds[name].values, to_dn(ref[:, i].values, offset=-0.1))
    # No-data pixels come back as the nodata value, 0, not NaN.
    assert (ds["B02"].values[1, :, :7] == 0).all()
    # The written 10 m grid itself, not a resampled one.
    np.testing.assert_array_equal(ds["x"].values, ref["x"].values)
    np.testing.assert_array_equal(ds["y"].values, ref["y"].values)
    assert ds.odc.geobox.affine == ref.rio.transform()
    assert ds["B02"].rio.crs == ref.rio.crs
    assert ds.odc.crs == "EPSG:32631"


def test_dn_scale_offset_and_nodata_are_in_the_items_not_the_variables(catalogue):
    ds = load(catalogue, bands=["B02"])
    # odc-stac 0.5.3 keeps only the nodata value: a caller turning DN into reflectance
    # must take scale and offset from the items' raster:bands (or know the baseline).
    assert ds["B02"].attrs == {"nodata": 0}
    (band,) = read_items(catalogue)[0].assets["B02"].extra_fields["raster:bands"]
    assert band == {
        "nodata": 0,
        "data_type": "uint16",
        "spatial_resolution": 10.0,
        "scale": 1e-4,
        "offset": -0.1,
    }


def test_pre_baseline_04_catalogue_stores_dn_without_offset(tmp_path):
    ref = simulate_pair((100, 100), seed=3).ref
    cat = write_catalog(tmp_path, ref, offset_baseline=False)
    ds = load(cat, bands=["B04"])
    np.testing.assert_array_equal(ds["B04"].values[0], np.rint(ref.values[2] * 10000))
    (band,) = read_items(cat)[0].assets["B04"].extra_fields["raster:bands"]
    assert band["offset"] == 0.0


def test_time_coordinate_equals_the_written_dates(catalogue):
    ds = load(catalogue, bands=["B02"])
    assert np.issubdtype(ds["time"].dtype, np.datetime64)  # naive, UTC
    np.testing.assert_array_equal(ds["time"].values, DATES)
    items = read_items(catalogue)
    assert [item.properties["datetime"] for item in items] == [
        "2022-06-15T10:56:21Z",
        "2022-06-20T10:56:19Z",
        "2022-07-05T10:56:25Z",
    ]


def test_load_is_lazy_and_reads_no_pixels_until_computed(series, tmp_path):
    ref, _ = series
    cat = write_catalog(tmp_path, ref)
    for tif in tmp_path.rglob("*.tif"):
        tif.unlink()
    # Building the Dataset opens no COG (they are gone); computing it does.
    ds = load(cat, bands=L2A)
    for name in L2A:
        assert isinstance(ds[name].data, da.Array)
        # chunks={}: one chunk per date, the whole image in y and x.
        assert ds[name].chunks == ((1, 1, 1), (56,), (56,))
    with pytest.raises(rasterio.errors.RasterioIOError):
        ds["B02"].compute()


def test_scl_asset_marks_masked_pixels_as_cloud(series, catalogue):
    _, mask = series
    ds = load(catalogue, bands=["SCL"])
    scl = ds["SCL"]
    assert scl.dtype == np.uint8 and scl.attrs["nodata"] == 0
    expected = np.where(mask.values, SCL_CLOUD_HIGH, SCL_VEGETATION)
    expected[1, :, :7] = 0  # no-data in every band on date 2
    np.testing.assert_array_equal(scl.values, expected)


def test_earth_search_asset_keys_load_by_name(series, tmp_path):
    ref, mask = series
    names = ["blue", "green", "red", "nir"]
    cat = write_catalog(tmp_path, ref, mask=mask, names=names, scl_name="scl")
    ds = load(cat, bands=[*names, "scl"])
    assert list(ds.data_vars) == [*names, "scl"]
    for i, name in enumerate(names):
        np.testing.assert_array_equal(ds[name].values, to_dn(ref[:, i].values, offset=-0.1))
    np.testing.assert_array_equal(ds["scl"].values > 0, ~np.isnan(ref.values).all(axis=1))


def test_l2a_band_names_also_load_by_common_name(series, catalogue):
    ref, _ = series
    ds = load(catalogue, bands=["blue", "nir"])
    # The eo:bands common names are aliases: the variables take the requested names.
    assert list(ds.data_vars) == ["blue", "nir"]
    np.testing.assert_array_equal(ds["nir"].values, to_dn(ref[:, 3].values, offset=-0.1))


def test_solar_day_merges_same_day_items_filling_nodata_from_the_later(tmp_path):
    early = simulate_pair((200, 200), seed=0).ref
    late = simulate_pair((200, 200), seed=1).ref
    early = early.where(early["x"] > early["x"][20])  # left 21 columns missing
    # 23:30 UTC is 23:42 solar time at lon 3 E: still the same solar day.
    dates = np.array(
        ["2022-06-15T10:56:21", "2022-06-15T23:30:00", "2022-06-16T10:40:00"], "datetime64[ns]"
    )
    cat = write_catalog(tmp_path, _stack([early, late, late], dates))
    assert load(cat, bands=["B02"], groupby="time").sizes["time"] == 3
    ds = load(cat, bands=["B02"], groupby="solar_day")
    # One plane per solar day, dated by its earliest item.
    np.testing.assert_array_equal(ds["time"].values, dates[[0, 2]])
    merged = ds["B02"].values[0]
    np.testing.assert_array_equal(merged[:, 21:], to_dn(early.values[0], offset=-0.1)[:, 21:])
    np.testing.assert_array_equal(merged[:, :21], to_dn(late.values[0], offset=-0.1)[:, :21])


def test_grid_off_the_10m_lines_is_kept_unless_crs_and_resolution_are_given(tmp_path):
    # Origin 5 m east and 3 m south of the 10 m lines through (0, 0).
    ref = simulate_pair((200, 200), seed=0, origin=(500005.0, 4799997.0)).ref
    cat = write_catalog(tmp_path, ref)
    written = ref.odc.geobox
    assert load(cat, bands=["B02"]).odc.geobox == written
    assert load(cat, bands=["B02"], like=ref).odc.geobox == written
    assert load(cat, bands=["B02"], geobox=written).odc.geobox == written
    # crs= with resolution= snaps pixel edges to multiples of 10 m from (0, 0) and
    # resamples (nearest) onto that grid, one pixel larger, unless anchor= says otherwise.
    snapped = load(cat, bands=["B02"], crs=ref.rio.crs, resolution=10).odc.geobox
    assert snapped != written and snapped.shape == (57, 57)
    anchored = load(cat, bands=["B02"], crs=ref.rio.crs, resolution=10, anchor=written.anchor)
    assert anchored.odc.geobox == written


def test_fit_on_a_stac_reference_matches_the_fit_on_the_array(tmp_path):
    pair = simulate_pair((400, 400), seed=0)
    cat = write_catalog(tmp_path / "stac", pair.ref)
    ds = load(cat, bands=L2A)
    truth = pair.truth.reflectance.values

    def rmse(out: xr.Dataset) -> np.ndarray:
        return np.sqrt(np.nanmean((out["prediction"].values - truth) ** 2, axis=(1, 2)))

    direct = xharmonise.fit(pair.src, pair.ref, method="linear", patch_size=16)
    # odc-stac drops raster:bands' scale and offset (see the test above), so the DN
    # scaling of a baseline 04.00+ product is given the way the README says.
    model = xharmonise.fit(
        pair.src, ds, method="linear", patch_size=16, scale=(None, 1e-4), offset=(None, -0.1)
    )
    out = xharmonise.predict(pair.src, model)
    xharmonise.to_zarr(out, tmp_path / "out.zarr")
    # DN quantisation (5e-5 reflectance) is far below the S2 noise (0.002): the STAC
    # fit is as good as the direct one up to that.
    assert (rmse(out) <= 1.1 * rmse(xharmonise.predict(pair.src, direct))).all()


def _readme_quickstart() -> str:
    text = (Path(__file__).parents[1] / "README.md").read_text()
    after = text.split("<!-- quickstart-stac -->", 1)[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_stac_quickstart_runs(tmp_path, monkeypatch, capsys):
    from xharmonise.simulate import simulate_series

    series = simulate_series((800, 800), seed=1, days=(-6, -1, 4), ref_clouds=[0.1, 0.9, 0.1])
    write_catalog(tmp_path / "stac", series.ref, mask=series.mask)
    # The Pleiades product: uint16 DN, reflectance x 10000.
    dn = (series.src * 1e4).round().clip(1, 65535).astype("uint16").rio.write_nodata(0)
    dn.rio.to_raster(tmp_path / "phr.tif")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_readme_quickstart(), "README.md", "exec"), namespace)
    model = namespace["model"]
    # The nearest date (the day before) was 90 % cloudy: its clear pixels and the next
    # date's filled the fit, never the date 6 days away.
    assert model.fit_report.dates["used"][0].startswith("2024-06-14")
    assert not any(d.startswith("2024-06-09") for d in model.fit_report.dates["used"])
    assert "2024-06-14" in capsys.readouterr().out
    stored = xr.open_zarr(tmp_path / "phr_harmonised.zarr")
    assert stored["prediction"].shape == series.src.shape
    pred = stored["prediction"].values
    truth = series.truth.reflectance.values
    before = np.sqrt(np.nanmean((series.src.values - truth) ** 2))
    assert np.sqrt(np.nanmean((pred - truth) ** 2)) < 0.5 * before
