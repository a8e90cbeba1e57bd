"""evaluate: a fitted model scored on a pair with fit's sampling and metrics.

Known truth: on the training pair, the test split must give back ``model.metrics`` and
the calibration's test-split coverage (the same patches, predictions and formulas; only
float rounding may differ); on a later date of a simulated series, the model's error
grows by the surface change the simulator put there.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import xharmonise
from xharmonise import psf
from xharmonise.errors import (
    BandMismatchError,
    GridError,
    InputTypeError,
    InputValueError,
    NoOverlapError,
)
from xharmonise.evaluation import FIT_DEFAULTS
from xharmonise.harmoniser import Harmoniser
from xharmonise.simulate import simulate_pair, simulate_series

# The metrics are float64 over the same float32 patches: identical in practice; this
# leaves room for a different summation order only.
ROUNDING = 1e-6
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def pair():
    # 80 x 80 reference pixels: 16 patches of 16 inside the ring, clouds on a tenth.
    return simulate_pair((400, 400), seed=3, ref_clouds=0.1)


@pytest.fixture(scope="module")
def linear(pair):
    return xharmonise.fit(
        pair.src, pair.ref, method="linear", mask=pair.mask, patch_size=16, progress=False
    )


def _max_difference(a: xr.DataArray, b: xr.DataArray) -> float:
    assert a.dims == b.dims and all((a[d].values == b[d].values).all() for d in a.dims)
    both = np.isfinite(a.values) & np.isfinite(b.values)
    assert (both == np.isfinite(a.values)).all()  # NaN where the other is NaN
    return float(np.abs(a.values - b.values)[both].max())


@pytest.mark.parametrize("backend", ["numpy", "dask"])
def test_test_split_gives_back_fits_table(pair, linear, backend):
    src, ref, mask = pair.src, pair.ref, pair.mask
    if backend == "dask":
        src, ref, mask = src.chunk(x=128, y=128), ref.chunk(x=32, y=32), mask.chunk(x=32, y=32)
    before = (src.copy(deep=True), ref.copy(deep=True))
    scores = xharmonise.evaluate(src, ref, linear, mask=mask, split="test", patch_size=16)
    assert _max_difference(scores["metrics"], linear.metrics) < ROUNDING
    # The coverage of the calibrated σ² is the fit's "after" column.
    after = linear.calibration_scores.sel(stage="after", drop=True)
    assert _max_difference(scores["calibration"].drop_vars("nominal"), after) < ROUNDING
    assert scores.attrs["patches"] == linear.patches["test"]
    assert scores.attrs["valid_patches"] == linear.patches["valid"]
    assert scores.attrs["variance_kind"] == "empirical"
    assert scores.attrs["calibration"] == "validation patches"
    # Inputs are not modified.
    xr.testing.assert_identical(src, before[0])
    xr.testing.assert_identical(ref, before[1])


def test_a_network_with_a_head_from_its_file_gives_back_its_table(pair, tmp_path):
    model = xharmonise.fit(
        pair.src,
        pair.ref,
        method="calibnet",
        variance=True,
        mask=pair.mask,
        patch_size=8,  # enough validation patches to calibrate the head on
        iterations=20,
        batch_size=8,
        seed=1,
        progress=False,
    )
    loaded = xharmonise.load(model.save(tmp_path / "m.safetensors"))
    scores = xharmonise.evaluate(
        pair.src, pair.ref, loaded, mask=pair.mask, split="test", patch_size=8, seed=1
    )
    assert _max_difference(scores["metrics"], model.metrics) < ROUNDING
    after = model.calibration_scores.sel(stage="after", drop=True)
    assert _max_difference(scores["calibration"].drop_vars("nominal"), after) < ROUNDING
    assert scores.attrs["variance_kind"] == "head"
    # Another seed is another split: other patches, other figures.
    other = xharmonise.evaluate(
        pair.src, pair.ref, loaded, mask=pair.mask, split="test", patch_size=8, seed=2
    )
    assert not np.allclose(other["metrics"].values, model.metrics.values)


def test_a_later_date_shows_the_degradation_the_surface_change_explains():
    # The crops grow between the source date and the reference 10 days later; the model
    # fitted on the reference of the source date cannot know it.
    series = simulate_series((400, 400), seed=0, days=(0, 10))
    model = xharmonise.fit(
        series.src, series.ref.isel(time=0), method="linear", patch_size=16, progress=False
    )
    same = xharmonise.evaluate(series.src, series.ref.isel(time=0), model, patch_size=16)
    later = xharmonise.evaluate(series.src, series.ref.isel(time=1), model, patch_size=16)
    scored = {"same": same, "later": later}
    rmse = {k: s["metrics"].sel(metric="rmse", stage="model") for k, s in scored.items()}
    assert (rmse["later"] > 1.5 * rmse["same"]).any()
    # Known truth: what the model misses is the change of the surface seen at 10 m, the
    # 2 m change blurred by the S2 MTF and averaged per reference pixel.
    change = (series.truth_at.isel(time=1) - series.truth.reflectance).values
    sigmas = psf.reference_sigmas(list(series.ref["band"].values), 5)
    seen = psf.degrade_array(change, sigmas, 5)
    expected = np.sqrt(rmse["same"].values ** 2 + np.nanmean(seen**2, axis=(1, 2)))
    np.testing.assert_allclose(rmse["later"].values, expected, rtol=0.25)
    # The series itself, with its later date chosen, is the same evaluation.
    picked = xharmonise.evaluate(
        series.src, series.ref, model, patch_size=16, dates=[series.ref.time.values[1]]
    )
    assert _max_difference(picked["metrics"], later["metrics"]) < ROUNDING
    assert picked["date_metrics"].sizes["date"] == 1


def test_a_neighbouring_scene_every_valid_patch(linear):
    other = simulate_pair((400, 400), seed=3, origin=(504000.0, 4800000.0), ref_clouds=0.1)
    scores = xharmonise.evaluate(other.src, other.ref, linear, mask=other.mask, patch_size=16)
    assert scores.attrs["split"] == "all"
    assert scores.attrs["patches"] == scores.attrs["valid_patches"]
    metrics = scores["metrics"].sel(metric="rmse")
    # Surface reflectance: the same sensors, the same affine mapping; it transfers.
    assert (metrics.sel(stage="model") < 0.5 * metrics.sel(stage="initial")).all()
    coverage = scores["calibration"].sel(measure="coverage_1.96")
    assert ((coverage > 0.85) & (coverage <= 1.0)).all()
    capped = xharmonise.evaluate(
        other.src, other.ref, linear, mask=other.mask, patch_size=16, max_patches=3
    )
    assert capped.attrs["patches"] == 3


def test_integer_dn_scaled_like_training():
    dn = simulate_pair((400, 400), seed=4, dtype="uint16")
    model = xharmonise.fit(dn.src, dn.ref, method="linear", patch_size=16, progress=False)
    # The source's metadata lost: it is scaled as the training source was, as in predict.
    bare = dn.src.copy()
    bare.attrs = {}
    scores = xharmonise.evaluate(bare, dn.ref, model, split="test", patch_size=16)
    assert _max_difference(scores["metrics"], model.metrics) < ROUNDING


def test_bands_pair_as_the_model_pairs_them(pair, linear):
    # Reordered reference bands, and an odc-stac-like Dataset of one variable per band.
    reordered = pair.ref.isel(band=[3, 1, 0, 2])
    dataset = pair.ref.to_dataset("band")
    expected = xharmonise.evaluate(pair.src, pair.ref, linear, mask=pair.mask, patch_size=16)
    for ref in (reordered, dataset):
        scores = xharmonise.evaluate(pair.src, ref, linear, mask=pair.mask, patch_size=16)
        assert _max_difference(scores["metrics"], expected["metrics"]) < ROUNDING
    with pytest.raises(BandMismatchError, match=r"select the model's bands"):
        xharmonise.evaluate(pair.src.isel(band=[0, 1, 2]), pair.ref.isel(band=[0, 1, 2]), linear)
    renamed = pair.src.assign_coords(band=["a", "b", "c", "d"])
    with pytest.raises(BandMismatchError, match=r"select the model's bands"):
        xharmonise.evaluate(renamed, pair.ref, linear)


def test_coregistered_model_corrects_by_its_shift_unless_told_otherwise():
    shifted = simulate_pair((600, 600), shift=(4.0, 0.0), seed=1)
    model = xharmonise.fit(
        shifted.src, shifted.ref, method="linear", patch_size=16, coregister=True, progress=False
    )
    scores = xharmonise.evaluate(shifted.src, shifted.ref, model, split="test", patch_size=16)
    assert _max_difference(scores["metrics"], model.metrics) < ROUNDING
    assert scores.attrs["coregistration_shift"] == list(model.applied_shift)
    # Measured again on this pair: the same seed, the same windows, the same shift.
    again = xharmonise.evaluate(
        shifted.src, shifted.ref, model, split="test", patch_size=16, coregister=True
    )
    assert _max_difference(again["metrics"], model.metrics) < ROUNDING
    # Left uncorrected, the 4 m shift costs the model.
    raw = xharmonise.evaluate(
        shifted.src, shifted.ref, model, split="test", patch_size=16, coregister=False
    )
    assert "coregistration_shift" not in raw.attrs
    rmse = raw["metrics"].sel(metric="rmse", stage="model")
    assert (rmse > 1.2 * model.metrics.sel(metric="rmse", stage="model")).all()


def test_a_model_without_sigma_has_no_calibration_table(pair, linear):
    # A head-less model saved before σ² was calibrated.
    old = Harmoniser(
        mapping=dataclasses.replace(linear.mapping, calibration=None), fit_report=linear.fit_report
    )
    scores = xharmonise.evaluate(pair.src, pair.ref, old, mask=pair.mask, patch_size=16)
    assert "calibration" not in scores and scores.attrs["variance_kind"] == "None"
    assert scores.attrs["calibration"] == "none"


def test_bad_inputs_name_the_fix(pair, linear):
    with pytest.raises(InputTypeError, match=r"xharmonise.load"):
        xharmonise.evaluate(pair.src, pair.ref, "model.safetensors")  # type: ignore[arg-type]
    with pytest.raises(InputValueError, match=r"split='train'"):
        xharmonise.evaluate(pair.src, pair.ref, linear, split="train")  # type: ignore[arg-type]
    with pytest.raises(InputValueError, match=r"patch_size=0"):
        xharmonise.evaluate(pair.src, pair.ref, linear, patch_size=0)
    far = simulate_pair((400, 400), seed=3, origin=(700000.0, 4800000.0))
    with pytest.raises(NoOverlapError, match=r"do not overlap"):
        xharmonise.evaluate(pair.src, far.ref, linear)
    coarser = simulate_pair((400, 400), seed=3, src_resolution=2.5)
    with pytest.raises(GridError, match=r"resample the source to 2"):
        xharmonise.evaluate(coarser.src, coarser.ref, linear, patch_size=16)


@pytest.mark.parametrize("backend", ["numpy", "dask"])
@pytest.mark.parametrize(
    ("size", "options"),
    [
        # 400 px: 4 patches of fit's default 32, one held out (at 200 px the one patch
        # would be its own test split, which any seed finds again).
        ((400, 400), {}),
        ((200, 200), {"patch_size": 16, "test_fraction": 0.2, "seed": 3}),
    ],
    ids=["fit-defaults", "patch16-test0.2-seed3"],
)
def test_the_test_split_is_found_again_from_the_options_the_model_records(size, options, backend):
    pair = simulate_pair(size, seed=5)
    model = xharmonise.fit(pair.src, pair.ref, method="linear", progress=False, **options)
    assert model.sampling == {**FIT_DEFAULTS, **options}
    assert 0 < model.patches["test"] < model.patches["valid"]  # a real held-out subset
    src, ref = pair.src, pair.ref
    if backend == "dask":
        src, ref = src.chunk(x=128, y=128), ref.chunk(x=32, y=32)
    scores = xharmonise.evaluate(src, ref, model, split="test")
    assert scores["metrics"].dims == model.metrics.dims
    for dim in model.metrics.dims:
        assert (scores["metrics"][dim].values == model.metrics[dim].values).all()
    # Same patches, same float32 predictions; only the summation order may differ.
    np.testing.assert_allclose(scores["metrics"].values, model.metrics.values, rtol=1e-5)
    assert scores.attrs["patches"] == model.patches["test"]
    assert scores.attrs["sampling_from"] == "model"
    expected = {**model.sampling, "max_patches": "none"}
    assert {k: scores.attrs[k] for k in FIT_DEFAULTS} == expected


def test_a_sampling_option_given_wins_over_the_models():
    pair = simulate_pair((200, 200), seed=5)
    model = xharmonise.fit(
        pair.src, pair.ref, method="linear", patch_size=16, test_fraction=0.2, seed=3
    )
    # fit's defaults given explicitly: another patch size, another split, other figures.
    scores = xharmonise.evaluate(pair.src, pair.ref, model, split="test", patch_size=32, seed=0)
    assert (scores.attrs["patch_size"], scores.attrs["seed"]) == (32, 0)
    assert scores.attrs["test_fraction"] == 0.2  # not given: the model's
    assert scores.attrs["sampling_from"] == "given, else model"
    assert not np.allclose(scores["metrics"].values, model.metrics.values, rtol=1e-3)
    with pytest.raises(InputValueError, match=r"test_fraction=1\.5"):
        xharmonise.evaluate(pair.src, pair.ref, model, test_fraction=1.5)


def test_a_model_saved_before_fit_recorded_its_sampling_falls_back_to_fits_defaults():
    # Release 0.1.0's linear model (tests/data/README.md), scored on a larger pair of the
    # simulator's bands and factor: fit's defaults, as if given.
    old = xharmonise.load(DATA / "model-v1-linear.safetensors")
    assert old.sampling is None
    pair = simulate_pair((400, 400), seed=5)
    scores = xharmonise.evaluate(pair.src, pair.ref, old, split="test")
    given = xharmonise.evaluate(pair.src, pair.ref, old, split="test", **FIT_DEFAULTS)
    xr.testing.assert_identical(scores["metrics"], given["metrics"])
    assert scores.attrs["sampling_from"] == "fit defaults"
    assert given.attrs["sampling_from"] == "given, else fit defaults"  # max_patches None
    assert scores.attrs["patch_size"] == 32 and scores.attrs["seed"] == 0


def test_the_fallback_is_fits_own_defaults():
    # FIT_DEFAULTS is written apart from fit's signature: a change of one must move both.
    parameters = inspect.signature(xharmonise.fit).parameters
    assert {k: parameters[k].default for k in FIT_DEFAULTS} == FIT_DEFAULTS
