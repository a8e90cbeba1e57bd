"""Calibrated σ²: the per-band scale, its diagnostics, the fitted model and its file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

import xharmonise
from xharmonise.calibration import LEVELS, calibration_table, variance_scale
from xharmonise.errors import InputValueError
from xharmonise.simulate import simulate_pair

DATA = Path(__file__).parent / "data"


def _gaussian(sigmas, head_factor, n=200_000, seed=0):
    """Residuals of known σ per band, and a head's σ² off by ``head_factor`` squared."""
    rng = np.random.default_rng(seed)
    sigma = np.asarray(sigmas)[None, :, None]
    residual = rng.normal(size=(1, len(sigmas), n)) * sigma
    var = np.broadcast_to((sigma * np.asarray(head_factor)[None, :, None]) ** 2, residual.shape)
    return residual, np.zeros_like(residual), var


def test_scale_undoes_a_known_miscalibration_per_band():
    # σ 1.4x too large (the finding), 2x too small, and right.
    target, pred, var = _gaussian([0.01, 0.03, 0.002], [1.4, 0.5, 1.0])
    scale = variance_scale(target, pred, var)
    np.testing.assert_allclose(scale, [1 / 1.4**2, 4.0, 1.0], rtol=0.02)


def test_scale_ignores_no_data_and_is_robust_to_a_few_gross_residuals():
    target, pred, var = _gaussian([0.01], [2.0])
    target = target.copy()
    target[0, 0, :1000] = np.nan  # no data
    target[0, 0, 1000:2000] = 1.0  # 0.5 % clouds the head did not flag: 100 σ away
    scale = variance_scale(target, pred, var)
    # The likelihood's closed form mean(r²/σ²) would be ~12x; the quantile moves little.
    assert 0.25 < scale[0] < 0.26 * 1.05
    assert np.mean(((target - pred) ** 2 / var)[np.isfinite(target)]) > 10


def test_diagnostics_before_and_after_match_the_gaussian_levels():
    target, pred, var = _gaussian([0.01, 0.02], [1.4, 0.7], seed=1)
    # Scale chosen on one half (validation), scored on the other (test), as fit does.
    half = target.shape[-1] // 2
    scale = variance_scale(target[..., :half], pred[..., :half], var[..., :half])
    table = calibration_table(
        target[..., half:], pred[..., half:], var[..., half:], scale, ["B4", "B8"]
    )
    assert table.dims == ("band", "measure", "stage")
    for k, nominal in LEVELS.items():
        after = table.sel(measure=f"coverage_{k:g}", stage="after")
        np.testing.assert_allclose(after, nominal, atol=0.005)
    before = table.sel(measure="coverage_1.96", stage="before").values
    assert before[0] > 0.99 and before[1] < 0.85  # too wide, too narrow
    nll = table.sel(measure="nll")
    assert (nll.sel(stage="after") < nll.sel(stage="before")).all()


@pytest.fixture(scope="module")
def cloudy_model():
    # Unmasked source clouds: the head's σ² is large on them, small on clear pixels.
    pair = simulate_pair((400, 400), seed=5, toa=True, src_clouds=0.1)
    model = xharmonise.fit(
        pair.src,
        pair.ref,
        method="calibnet",
        variance=True,
        patch_size=16,
        iterations=200,
        progress=False,
    )
    return pair, model


def test_fit_calibrates_the_head_on_validation_and_reports_the_test_split(cloudy_model):
    _, model = cloudy_model
    scale = model.variance_scale
    assert scale is not None and len(scale) == 4 and all(s > 0 for s in scale)
    cal = model.calibration
    assert set(cal.stage.values) == {"before", "after"}
    assert list(cal.band.values) == list(model.ref_bands)
    # Chosen on the validation patches, scored on the test patches: close to the target
    # on data it was not chosen on, and closer than the head alone.
    after = cal.sel(measure="coverage_1.96", stage="after")
    before = cal.sel(measure="coverage_1.96", stage="before")
    assert (abs(after - 0.95) < 0.05).all(), after.values
    assert float(abs(after - 0.95).mean()) <= float(abs(before - 0.95).mean())
    # The report's variance samples are what predict returns: calibrated.
    assert "variance" in model.samples


def test_predict_applies_the_scale_to_the_heads_variance(cloudy_model):
    pair, model = cloudy_model
    raw = xharmonise.Harmoniser(
        mapping=dataclasses.replace(model.mapping, variance_scale=None),
        fit_report=model.fit_report,
    )
    src = pair.src.isel(y=slice(0, 60), x=slice(0, 60))
    out, plain = xharmonise.predict(src, model), xharmonise.predict(src, raw)
    np.testing.assert_array_equal(out["prediction"].values, plain["prediction"].values)
    factor = np.asarray(model.variance_scale, np.float32)[:, None, None]
    np.testing.assert_allclose(out["variance"].values, plain["variance"].values * factor, rtol=1e-6)
    assert out["variance"].attrs["calibration"] == "per-band scale"
    assert plain["variance"].attrs["calibration"] == "none"


def test_calibration_survives_save_and_load(cloudy_model, tmp_path):
    _, model = cloudy_model
    back = xharmonise.load(model.save(tmp_path / "m.safetensors"))
    assert back.variance_scale == model.variance_scale
    np.testing.assert_array_equal(back.calibration.values, model.calibration.values)
    assert back.calibration.dims == model.calibration.dims


@pytest.mark.parametrize("name", ["model-v1-bcnet", "model-v2-bcnet"])
def test_models_saved_before_calibration_load_uncalibrated(name):
    model = xharmonise.load(DATA / f"{name}.safetensors")
    assert model.variance  # these have a head, saved without a scale
    assert model.variance_scale is None and model.calibration is None


def test_models_without_a_head_have_no_scale():
    pair = simulate_pair((200, 200), seed=0)
    model = xharmonise.fit(pair.src, pair.ref, method="linear", patch_size=8)
    assert model.variance_scale is None and model.calibration is None


@pytest.mark.parametrize(
    ("scale", "says"),
    [((1.0, 1.0), "one factor per band"), ((1.0, 1.0, 0.0, 1.0), "positive"),
     ((1.0, 1.0, float("nan"), 1.0), "positive")],
)  # fmt: skip
def test_mapping_refuses_bad_scales(cloudy_model, scale, says):
    _, model = cloudy_model
    with pytest.raises(InputValueError, match=says):
        dataclasses.replace(model.mapping, variance_scale=scale)
    no_head = xharmonise.fit(
        *(lambda p: (p.src, p.ref))(simulate_pair((200, 200), seed=0)),
        method="linear",
        patch_size=8,
    ).mapping
    with pytest.raises(InputValueError, match="only with a variance head"):
        dataclasses.replace(no_head, variance_scale=(1.0,) * 4)
