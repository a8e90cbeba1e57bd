"""A Sentinel-2 time series as the reference (issue #14): dates chosen for the source.

The simulated series (``simulate_series``) knows the truth at the source date; a fit on a
cloud-free copy of the nearest date is the yardstick every policy is scored against.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import xharmonise
from xharmonise import dates
from xharmonise.errors import BandMismatchError, DateError, DimensionError
from xharmonise.masks import dilate_mask
from xharmonise.simulate import simulate_series
from xharmonise.validation import score_against_truth

SHAPE = (500, 500)
DAYS = (-9, -1, 3)  # the nearest date is the day before the source
NEAREST = "2024-06-14T00:00:00"
NEXT = "2024-06-18T00:00:00"
BUDGETS = {"linear": None, "calibnet": 100}
# CalibNet's CPU budget draws 4096 pixels a step; 4 patches' worth (1024) is enough here.
BATCHES = {"calibnet": 4}


@pytest.fixture(scope="module")
def clean():
    # Crops grow between dates, and parcels are harvested 2 days after the source date:
    # the next date (+3) shows bare soil where the source saw crops.
    return simulate_series(SHAPE, seed=0, days=DAYS, harvest_day=2)


@pytest.fixture(scope="module")
def heavy():
    # The nearest date is about 90 % covered (96 % on this scene), the others lightly.
    return simulate_series(SHAPE, seed=0, days=DAYS, ref_clouds=[0.1, 0.9, 0.1], harvest_day=2)


def _fit(series, method="linear", **kw):
    kw.setdefault("mask", series.mask)
    return xharmonise.fit(
        series.src,
        series.ref,
        method=method,
        patch_size=16,
        iterations=BUDGETS[method],
        batch_size=BATCHES.get(method),
        progress=False,
        **kw,
    )


def _rmse(model, truth_series) -> float:
    scores = score_against_truth(model, truth_series)
    return float(scores["rmse_clear"].sel(stage="model").mean())


@pytest.mark.parametrize("method", list(BUDGETS))
def test_a_mostly_cloudy_nearest_date_is_filled_from_the_next(clean, heavy, method):
    yardstick = _rmse(_fit(clean, method, mask=None, dates="nearest"), clean)
    model = _fit(heavy, method)
    assert _rmse(model, clean) <= 1.3 * yardstick
    record = model.fit_report.dates
    assert record["policy"] == "auto" and record["used"] == [NEAREST, NEXT]
    assert record["train_pixels"][NEAREST] > 0 and record["train_pixels"][NEXT] > 0
    # The harvested parcels of the next date were left out; the nearest date's never are.
    assert record["changed_pixels_left_out"][NEAREST] == 0
    assert record["changed_pixels_left_out"][NEXT] > 0
    # Per-date metrics: one column per date used, every band scored.
    table = model.fit_report.date_metrics.sel(metric="rmse", stage="model")
    assert list(table["date"].values) == [NEAREST, NEXT]
    assert np.isfinite(table.sel(date=NEXT)).all()


def test_the_nearest_date_alone_may_be_unusable(heavy):
    with pytest.raises(xharmonise.NoValidPatchesError):
        _fit(heavy, dates="nearest")


def test_a_lightly_cloudy_nearest_date_is_used_alone(clean):
    light = simulate_series(SHAPE, seed=0, days=DAYS, ref_clouds=0.1)
    auto, nearest = _fit(light), _fit(light, dates="nearest")
    assert auto.fit_report.dates["used"] == [NEAREST]
    assert _rmse(auto, clean) <= 1.05 * _rmse(nearest, clean)


def test_an_overcast_nearest_date_is_skipped_and_the_model_says_so(clean):
    overcast = simulate_series(SHAPE, seed=0, days=DAYS, ref_clouds=[0.1, 1.0, 0.1], harvest_day=2)
    model = _fit(overcast)
    record = model.fit_report.dates
    assert record["used"] == [NEXT]
    # Not the nearest date: its harvested parcels are found and left out.
    assert record["changed_pixels_left_out"][NEXT] > 0
    nearest = next(c for c in record["candidates"] if c["date"] == NEAREST)
    assert nearest["clear_pixels"] == 0 and nearest["days"] == -1.0
    assert _rmse(model, clean) <= 1.3 * _rmse(_fit(clean, mask=None, dates="nearest"), clean)


def test_changed_ground_is_left_out_where_it_would_spoil_the_fit(clean, heavy):
    # The next date alone (trusted as given) carries the harvest into a linear fit; as a
    # filler its changed pixels are found and left out.
    yardstick = _rmse(_fit(clean, mask=None, dates="nearest"), clean)
    alone = _rmse(_fit(heavy, dates=[NEXT]), clean)
    filled = _fit(heavy, dates="all")
    assert alone > 2 * yardstick
    assert _rmse(filled, clean) <= 1.3 * yardstick
    left_out = filled.fit_report.dates["changed_pixels_left_out"][NEXT]
    assert left_out > 0.05 * filled.fit_report.dates["train_pixels"][NEXT]


def test_far_dates_make_the_fit_worse_than_the_nearest(clean):
    # Why dates matter: the same clear scene fitted on the date 9 days away.
    near = _rmse(_fit(clean, mask=None, dates=[NEAREST]), clean)
    far = _rmse(_fit(clean, mask=None, dates=["2024-06-06"]), clean)
    assert far > 2 * near


def test_explicit_dates_and_all_policy(heavy):
    model = _fit(heavy, dates=["2024-06-18", "2024-06-06"])
    assert model.fit_report.dates["policy"] == "explicit"
    assert model.fit_report.dates["used"] == [NEXT, "2024-06-06T00:00:00"]
    everything = _fit(heavy, dates="all")
    assert everything.fit_report.dates["used"] == [NEAREST, NEXT, "2024-06-06T00:00:00"]


def _as_odc_stac(ref: xr.DataArray) -> xr.Dataset:
    # odc-stac's layout: one (time, y, x) variable per band, named as the L2A assets.
    names = {"B2": "B02", "B3": "B03", "B4": "B04", "B8": "B08"}
    return xr.Dataset({names[str(b)]: ref.sel(band=b, drop=True) for b in ref.band.values})


def test_odc_stac_stackstac_and_geotiff_forms_give_the_same_model(clean, tmp_path):
    date = clean.ref.isel(time=1)
    src_tif, ref_tif = tmp_path / "src.tif", tmp_path / "ref.tif"
    clean.src.rio.to_raster(src_tif)
    date.rio.to_raster(ref_tif)
    import rioxarray

    src_file = rioxarray.open_rasterio(src_tif)
    ref_file = rioxarray.open_rasterio(ref_tif).assign_coords(band=list(date.band.values))
    models = {
        "geotiff": xharmonise.fit(src_file, ref_file, method="linear", patch_size=16),
        "stackstac": _fit(clean, mask=None, dates=[NEAREST]),
        "odc-stac": xharmonise.fit(
            clean.src,
            _as_odc_stac(clean.ref),
            method="linear",
            patch_size=16,
            dates=[NEAREST],
        ),
    }
    reference = models["stackstac"].metrics
    for model in models.values():
        # Band names aside (B02 or B2), the same scores.
        np.testing.assert_allclose(model.metrics.values, reference.values, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(model.linear, models["stackstac"].linear, rtol=1e-5)
    # The L2A spellings get the bands' own MTF, as B2... do.
    np.testing.assert_allclose(models["odc-stac"].sigmas, models["stackstac"].sigmas)


def test_the_series_is_read_lazily(clean):
    lazy = simulate_series(SHAPE, seed=0, days=DAYS, chunks=128)
    paired = xharmonise.stages.reflectance_pair(lazy.src, _as_odc_stac(lazy.ref))
    reduced, mask, dated = xharmonise.stages.single_reference(paired, None, policy="auto")
    assert mask is not None and dated is not None
    # Choosing the dates computed only 10 m clear-pixel counts: the composite is lazy.
    assert reduced.ref.chunks is not None and reduced.ref.dims == ("band", "y", "x")


# ---------------------------------------------------------------------------- errors


def test_a_source_time_series_is_refused(clean):
    two = xr.concat([clean.src, clean.src], dim="time")
    with pytest.raises(DimensionError, match="one acquisition at a time"):
        xharmonise.fit(two, clean.ref, method="linear")


def test_a_4d_reference_without_time_is_refused(clean):
    odd = clean.ref.rename(time="level")
    with pytest.raises(DimensionError, match="level"):
        xharmonise.fit(clean.src, odd, method="linear")


def test_no_reference_date_in_the_window(clean):
    with pytest.raises(DateError, match="max_days"):
        _fit(clean, mask=None, max_days=0.5)


def test_unknown_source_date_names_src_time(clean):
    undated = clean.src.drop_vars("time")
    with pytest.raises(DateError, match="src_time="):
        xharmonise.fit(undated, clean.ref, method="linear")
    # Given, it is used.
    model = xharmonise.fit(
        undated, clean.ref, method="linear", patch_size=16, src_time="2024-06-19T10:00Z"
    )
    assert model.fit_report.dates["used"][0] == NEXT


def test_masks_whose_dates_differ_are_refused(clean):
    shifted = clean.mask.assign_coords(time=clean.mask.time + np.timedelta64(1, "D"))
    with pytest.raises(DateError, match="one mask per reference date"):
        _fit(clean, mask=shifted)
    with pytest.raises(DateError, match="one image"):
        xharmonise.fit(clean.src, clean.ref.isel(time=0), method="linear", mask=clean.mask)


def test_a_dataset_mixing_bands_and_scl_is_refused(clean):
    ds = _as_odc_stac(clean.ref)
    ds["SCL"] = xr.zeros_like(ds["B02"], dtype=np.uint8)
    with pytest.raises(BandMismatchError, match=r"\['SCL'\].*bands="):
        xharmonise.fit(clean.src, ds, method="linear")


def test_explicit_dates_the_reference_lacks(clean):
    with pytest.raises(DateError, match="does not have"):
        _fit(clean, mask=None, dates=["2024-07-01"])


@pytest.mark.parametrize("value", ["soon", 3, []])
def test_bad_dates_options(clean, value):
    with pytest.raises(xharmonise.InputValueError if value != 3 else xharmonise.InputTypeError):
        _fit(clean, mask=None, dates=value)


def test_source_dates_from_attributes():
    src = xr.DataArray(np.zeros((1, 2, 2)), dims=("band", "y", "x"))
    assert dates.source_date(src.assign_attrs(TIFFTAG_DATETIME="2024:06:15 10:30:00")) == (
        np.datetime64("2024-06-15T10:30:00")
    )
    assert dates.source_date(src) is None
    assert dates.as_date("2024-06-15T12:00:00+02:00", "x") == np.datetime64("2024-06-15T10:00")


def test_the_pixels_left_out_are_the_harvested_ones(heavy):
    # The changed-ground check against the simulator's truth: which training pixels of
    # the filling date it masked, and which of them the harvest really changed.
    from xharmonise import sampling, stages
    from xharmonise.models import method

    paired = stages.reflectance_pair(heavy.src, heavy.ref)
    paired, mask, dated = stages.single_reference(paired, heavy.mask, patch_size=16)
    pair = stages.prepare_pair(paired, mask=mask, coregister=False, measure=False, seed=0)
    data = stages.build_training_data(
        pair, method("linear"), patch_size=16, test_fraction=0.1, max_patches=None, seed=0
    )
    checked, counts = stages.leave_out_changes(dated, stages.date_index(dated, pair), data)
    before = ~np.isnan(data.train.ref).any(axis=1)
    after = ~np.isnan(checked.train.ref).any(axis=1)
    left_out = before & ~after
    g = pair.grid
    which = dated.which.isel(y=g.ref_rows, x=g.ref_cols).values
    truth = heavy.changed_ref.sel(time=np.datetime64(NEXT)).isel(y=g.ref_rows, x=g.ref_cols)
    changed = sampling.windows(data.index, data.train_cells, truth.values)
    # The S2 blur carries a harvested parcel's change up to 2 pixels beyond its footprint.
    blurred = sampling.windows(
        data.index, data.train_cells, dilate_mask(truth.values.astype(bool), 2)
    )
    assert left_out.sum() == counts[NEXT] > 0
    # It finds the harvest it saw, nearly all of it; the rest of what it masks is mostly
    # the far tail of crop growth (about half the masked pixels), and it leaves the
    # filling date's other pixels to the fit.
    from_next = before & (sampling.windows(data.index, data.train_cells, which) == 1)
    recall = (left_out & changed).sum() / (before & changed).sum()
    precision = (left_out & blurred).sum() / left_out.sum()
    assert recall > 0.9 and precision > 0.4, (recall, precision)
    assert left_out.sum() < 0.25 * from_next.sum()
