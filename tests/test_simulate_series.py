"""simulate_series: a Sentinel-2 time series around the source date, with a known truth."""

import dask.array as da
import numpy as np
import pytest
from conftest import chunks_for

from xharmonise import psf
from xharmonise.simulate import Truth, simulate_pair, simulate_series

# NDVI of the class spectra (texture and brightness scale all bands alike, so a class keeps
# its NDVI on every pixel): green crop 0.818, forest 0.806, dry grass 0.294, bare soil
# 0.163; urban, roads, roofs, bright soil and water are all below 0.2.
_CROP_NDVI, _SOIL_NDVI = 0.818, 0.163


def _ndvi(a: np.ndarray) -> np.ndarray:
    return (a[3] - a[2]) / (a[3] + a[2])


@pytest.fixture(scope="module")
def harvested():
    """A series with a harvest between the source date and day 2, dates either side."""
    return simulate_series((300, 300), seed=4, days=(3, -4), harvest_day=2, harvest_fraction=0.5)


def test_simulate_pair_output_is_unchanged():
    # Sums recorded with simulate_pair as it was before simulate_series shared its code;
    # rtol far above float rounding differences between platforms, far below any change.
    pair = simulate_pair(
        (120, 120), seed=11, toa=True, shift=(2.0, -1.0), ref_clouds=0.2, src_clouds=0.1
    )
    expected = {
        "src": [2603.91841, 2220.96544, 2090.10787, 3980.73284],
        "ref": [156.476363, 203.943469, 201.121761, 478.232526],
        "truth": [1025.8228, 1405.93716, 1271.86081, 4046.09082],
    }
    for name, arr in (("src", pair.src), ("ref", pair.ref), ("truth", pair.truth.reflectance)):
        sums = np.nansum(arr.values.astype(np.float64), axis=(1, 2))
        np.testing.assert_allclose(sums, expected[name], rtol=1e-6, err_msg=name)
    assert int(pair.mask.values.sum()) == 57
    assert int(pair.truth.src_clouds.values.sum()) == 452


@pytest.mark.parametrize("harvest_day", [None, 5])
def test_a_reference_at_the_source_date_is_simulate_pair(harvest_day):
    # No date across the harvest (or none at all): nothing moved, the pair is the series.
    kw = dict(seed=3, toa=True, shift=(3.0, -1.0), src_clouds=0.1, ref_clouds=0.3, nodata_border=6)
    pair = simulate_pair((150, 150), **kw)
    series = simulate_series((150, 150), days=(0,), harvest_day=harvest_day, **kw)
    np.testing.assert_array_equal(series.src.values, pair.src.values)
    np.testing.assert_array_equal(series.ref.values[0], pair.ref.values)
    np.testing.assert_array_equal(series.mask.values[0], pair.mask.values)
    np.testing.assert_array_equal(series.truth.reflectance.values, pair.truth.reflectance.values)
    np.testing.assert_array_equal(series.truth_at.values[0], pair.truth.reflectance.values)
    np.testing.assert_array_equal(series.truth.src_clouds.values, pair.truth.src_clouds.values)
    assert series.truth.mapping is None and series.truth.shift == pair.truth.shift


def test_grids_dims_coords_and_crs():
    series = simulate_series((100, 100), days=(-2, 1), src_date="2024-06-15", ref_clouds=0.2)
    pair = simulate_pair((100, 100))
    assert series.src.dims == ("band", "y", "x") and series.src["time"].ndim == 0
    assert series.src["time"].values == np.datetime64("2024-06-15", "ns")
    assert series.ref.dims == ("time", "band", "y", "x")
    assert series.ref["time"].dtype == np.dtype("datetime64[ns]")
    assert list(series.ref["band"].values) == list(pair.ref["band"].values)
    assert series.ref.shape[1:] == pair.ref.shape
    np.testing.assert_array_equal(series.ref["x"].values, pair.ref["x"].values)
    np.testing.assert_array_equal(series.ref["y"].values, pair.ref["y"].values)
    assert "spatial_ref" in series.ref.coords
    assert series.ref.rio.crs == pair.ref.rio.crs
    assert series.ref.rio.resolution() == (10.0, -10.0)
    assert series.ref.rio.transform() == pair.ref.rio.transform()
    assert series.mask.dims == ("time", "y", "x") and series.mask.dtype == bool
    assert series.mask.shape == (2, *pair.mask.shape)
    assert isinstance(series.truth, Truth)
    assert series.truth.reflectance.dims == ("band", "y", "x")
    assert series.truth.ref_clouds is series.mask
    assert series.truth_at.dims == ("time", "band", "y", "x")
    assert series.truth_at.shape == (2, *pair.truth.reflectance.shape)
    assert series.changed.dims == ("y", "x") and series.changed.shape == pair.src.shape[1:]
    assert series.changed_ref.dims == ("time", "y", "x") and series.changed_ref.dtype == bool
    assert series.changed_ref.shape == series.mask.shape
    assert series.truth_at.rio.crs == series.changed_ref.rio.crs == pair.src.rio.crs


def test_dates_are_sorted_and_keep_their_clouds():
    series = simulate_series(
        (100, 100), seed=1, src_date="2023-05-01", days=(8, -10, 0, 3), ref_clouds=(0.0, 0.4, 0, 0)
    )
    assert series.days == (-10, 0, 3, 8)
    expected = np.datetime64("2023-05-01", "ns") + np.array([-10, 0, 3, 8]) * np.timedelta64(1, "D")
    np.testing.assert_array_equal(series.dates, expected)
    np.testing.assert_array_equal(series.truth_at["time"].values, expected)
    assert series.src_date == np.datetime64("2023-05-01", "ns")
    # The 0.4 cloud fraction was given for day -10: it stays with that date once sorted.
    cloudy = series.mask.any(("y", "x")).values
    assert cloudy.tolist() == [True, False, False, False]


def test_cloud_fractions_per_date_and_independent():
    # Clouds are blobs a few hundred metres across: one 1 km scene's cover is far from its
    # expected value, so the fraction is checked on the mean over several dates.
    low, high = 0.1, 0.4
    days = tuple(range(-8, 8, 2))
    series = simulate_series((300, 300), seed=2, days=days, ref_clouds=(low, high) * 4)
    cover = series.mask.mean(("y", "x")).values
    assert abs(cover[0::2].mean() - low) < 0.07
    assert abs(cover[1::2].mean() - high) < 0.12
    masks = series.mask.values[1::2]
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            overlap = (masks[i] & masks[j]).sum() / (masks[i] | masks[j]).sum()
            # Identical fields would overlap fully; independent ones about cover / (2 - cover).
            assert overlap < 0.6, (days[2 * i + 1], days[2 * j + 1], overlap)


def test_masked_clouds_are_bright_in_ref(backend):
    series = simulate_series(
        (300, 300), seed=6, days=(-3, 2), ref_clouds=0.25, chunks=chunks_for(backend)
    )
    ref, mask = series.ref.values, series.mask.values
    for t in range(2):
        assert 0.02 < mask[t].mean() < 0.6
        assert ref[t, 0][mask[t]].mean() > ref[t, 0][~mask[t]].mean() + 0.2


@pytest.mark.parametrize("harvest_day", [2, -2])
def test_harvest_turns_crop_parcels_to_bare_soil(harvest_day):
    series = simulate_series(
        (300, 300), seed=4, days=(-4, 3), harvest_day=harvest_day, harvest_fraction=0.5
    )
    changed = series.changed.values
    assert 0.02 < changed.mean() < 0.5
    src_ndvi = _ndvi(series.truth.reflectance.values)[changed]
    after = _ndvi(series.truth_at.values[1])[changed]
    before = _ndvi(series.truth_at.values[0])[changed]
    # Only the dates across the harvest see a change: day 3 when harvested by day 2, day -4
    # when harvested between day -2 and the source date (then the source sees bare soil).
    if harvest_day > 0:
        np.testing.assert_allclose(src_ndvi, _CROP_NDVI, atol=1e-3)
        np.testing.assert_allclose(after, _SOIL_NDVI, atol=1e-3)
        assert (before > 0.7).all()  # still crop, a little less green (phenology)
        assert series.changed_ref.any(("y", "x")).values.tolist() == [False, True]
    else:
        np.testing.assert_allclose(src_ndvi, _SOIL_NDVI, atol=1e-3)
        np.testing.assert_allclose(after, _SOIL_NDVI, atol=1e-3)
        assert (before > 0.7).all()
        assert series.changed_ref.any(("y", "x")).values.tolist() == [True, False]
    # The source date's surface is simulate_pair's, but where the source sees the harvest.
    pair = simulate_pair((300, 300), seed=4)
    differs = (series.truth.reflectance.values != pair.truth.reflectance.values).any(axis=0)
    np.testing.assert_array_equal(differs, changed if harvest_day < 0 else np.zeros_like(changed))


def test_changed_ref_is_the_footprint_of_changed_pixels(harvested):
    # Source pixels (no shift, no offset) tile the reference grid from its 9th row and
    # column: a reference pixel inside the footprint changed iff one of its 5 x 5 did.
    changed = harvested.changed.values
    blocks = changed.reshape(60, 5, 60, 5).any(axis=(1, 3))
    at_day3 = harvested.changed_ref.values[1]
    np.testing.assert_array_equal(at_day3[8:68, 8:68], blocks)
    assert not harvested.changed_ref.values[0].any()
    # The harvest shows in the reference: changed pixels lost NIR, unchanged ones did not.
    ref = harvested.ref.values
    inner = np.zeros_like(at_day3)
    inner[10:66, 10:66] = True  # away from edges the MTF blurs across
    dnir = ref[1, 3] - ref[0, 3]
    assert dnir[at_day3 & inner].mean() < -0.05
    assert abs(dnir[~at_day3 & inner].mean()) < 0.03


def test_no_change_without_a_date_across_the_harvest():
    for kw in (dict(harvest_day=None), dict(harvest_day=2), dict(harvest_day=-6)):
        series = simulate_series((200, 200), seed=4, days=(-4, 1), harvest_fraction=0.5, **kw)
        assert not series.changed.values.any(), kw
        assert not series.changed_ref.values.any(), kw


def test_phenology_greens_vegetation_and_leaves_the_rest():
    series = simulate_series((300, 300), seed=4, days=(-10, 0, 10))
    truth = series.truth.reflectance.values
    first, last = series.truth_at.values[0], series.truth_at.values[-1]
    ndvi = _ndvi(truth)
    veg, rest = ndvi > 0.7, ndvi < 0.2  # crops and forest; soils, urban, roads, water
    assert veg.mean() > 0.1 and rest.mean() > 0.1
    dnir, dred = last[3] - first[3], last[2] - first[2]
    # A green-up is monotonic: no vegetation pixel loses NIR or gains red, most move.
    assert (dnir[veg] >= 0).all() and (dred[veg] <= 0).all()
    assert dnir[veg].mean() > 0.02 and dred[veg].mean() < -0.004
    assert (dnir[veg] > 0.01).mean() > 0.3
    np.testing.assert_array_equal(first[:, rest], last[:, rest])
    # In the reference, non-vegetation only differs by the two dates' noise (0.0012 each).
    ref = series.ref.values
    ref_rest = (_ndvi(ref[0]) < 0.2) & (_ndvi(ref[-1]) < 0.2)
    ref_veg = (_ndvi(ref[0]) > 0.7) & (_ndvi(ref[-1]) > 0.7)
    noise = np.median(np.abs(ref[-1] - ref[0])[:, ref_rest], axis=1)
    assert (noise < 0.0012 * 1.5).all()
    assert np.median((ref[-1, 3] - ref[0, 3])[ref_veg]) > 5 * noise[3]


def test_chunked_equals_unchunked_and_is_lazy():
    kw = dict(
        seed=2,
        days=(-5, 0, 4),
        ref_clouds=(0.2, 0.1, 0.3),
        harvest_day=3,
        harvest_fraction=0.6,
        toa=True,
        shift=(2.0, 1.0),
        src_clouds=0.1,
        nodata_border=5,
    )
    eager = simulate_series((240, 230), **kw)
    lazy = simulate_series((240, 230), chunks=64, **kw)
    for name in ("src", "ref", "mask", "truth_at", "changed", "changed_ref"):
        arr = getattr(lazy, name)
        assert isinstance(arr.data, da.Array), name
        np.testing.assert_array_equal(arr.values, getattr(eager, name).values, err_msg=name)
    assert lazy.ref.data.chunks[0] == (1, 1, 1)  # one date per chunk
    assert eager.changed.values.any()
    np.testing.assert_array_equal(lazy.truth.reflectance.values, eager.truth.reflectance.values)


def test_integer_products():
    series = simulate_series((100, 100), days=(-1, 2), dtype="uint16")
    assert series.src.dtype == np.uint16 and series.ref.dtype == np.uint16
    assert series.ref.attrs["add_offset"] == -0.1 and series.ref.rio.nodata == 0


def _linear_fit_rmse(series, day: int) -> float:
    """2 m RMSE vs the truth of per-band least squares learned from the reference at day.

    The features are the source bands (and 1), degraded to 10 m by the S2 MTF, as the
    `linear` method learns them; the fitted map is applied to the 2 m source.
    """
    src = series.src.values.astype(np.float64)
    nb, ny, nx = src.shape
    low = psf.degrade_array(src, psf.reference_sigmas(series.ref["band"].values, 5), 5)
    low = low.reshape(nb, -1)
    ok = np.isfinite(low).all(axis=0)
    # The source starts 80 m (8 reference pixels) inside the reference grid, in phase.
    ref = series.ref.sel(time=series.src_date + np.timedelta64(day, "D")).values
    ref = ref[:, 8 : 8 + ny // 5, 8 : 8 + nx // 5].reshape(nb, -1).astype(np.float64)
    features = np.vstack([low[:, ok], np.ones(ok.sum())]).T
    coef, *_ = np.linalg.lstsq(features, ref[:, ok].T, rcond=None)
    pred = coef.T @ np.vstack([src.reshape(nb, -1), np.ones(ny * nx)])
    truth = series.truth.reflectance.values.reshape(nb, -1)
    return float(np.sqrt(np.mean((pred - truth) ** 2)))


def test_a_mapping_learned_10_days_away_is_clearly_worse():
    # The phenology is sized so that a date 10 days from the source costs the linear map
    # 2-7x the error of one learned a day away (about 3.4x on 1000 x 1000 pixels; 2.2-4.9x
    # over seeds 0-5 here); the day-1 maps sit at the noise floor of the day-0 map.
    series = simulate_series((400, 400), seed=0, days=(-10, -1, 0, 1, 10))
    rmse = {d: _linear_fit_rmse(series, d) for d in series.days}
    assert rmse[-1] < 1.1 * rmse[0] and rmse[1] < 1.1 * rmse[0]
    for far, near in ((-10, -1), (10, 1)):
        assert 2.0 <= rmse[far] / rmse[near] <= 7.0, (far, rmse)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(days=()), "days is empty"),
        (dict(days=(1, 1)), "distinct"),
        (dict(days=(0.5,)), "whole numbers"),
        (dict(days=(1, 2), ref_clouds=(0.1,)), "one per"),
        (dict(harvest_day=0), "harvest_day=0"),
        (dict(harvest_fraction=1.5), r"\[0, 1\]"),
        (dict(src_date="not a date"), "src_date"),
        (dict(dtype="int8"), "dtype"),
    ],
)
def test_invalid_arguments_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        simulate_series((50, 50), **kw)
