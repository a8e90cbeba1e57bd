"""Clouds masked per pixel: partly cloudy patches are kept, their masked pixels left out.

The simulator knows the truth: a fit on a date with masked blobby clouds is scored at 2 m
against the true S2-equivalent reflectance, beside the same fit on a cloud-free copy of
the date (same surface, same seed, no cloud).
"""

from __future__ import annotations

import numpy as np
import pytest

import xharmonise
from xharmonise import sampling
from xharmonise.simulate import simulate_pair
from xharmonise.validation import score_against_truth

SHAPE = (500, 500)
PATCH = 16
BUDGETS = {"linear": None, "calibnet": 150, "convcalibnet": 150, "bcnet": 200}
# CalibNet's CPU budget draws 4096 pixels a step; 4 patches' worth (1024) is enough here.
BATCHES = {"calibnet": 4}


@pytest.fixture(scope="module")
def dates():
    cloudy = simulate_pair(SHAPE, seed=3, ref_clouds=0.2)
    clear = simulate_pair(SHAPE, seed=3)
    return cloudy, clear


def _fit(pair, method, mask=None):
    return xharmonise.fit(
        pair.src,
        pair.ref,
        method=method,
        mask=mask,
        patch_size=PATCH,
        iterations=BUDGETS[method],
        batch_size=BATCHES.get(method),
        seed=0,
        progress=False,
    )


def test_the_dates_differ_only_by_their_clouds(dates):
    cloudy, clear = dates
    cover = float(cloudy.mask.mean())
    assert 0.12 < cover < 0.28
    free = ~cloudy.mask.values
    np.testing.assert_array_equal(cloudy.ref.values[:, free], clear.ref.values[:, free])


def test_partly_cloudy_patches_are_kept_and_most_patches_are_usable(dates):
    cloudy, _ = dates
    patches = _fit(cloudy, "linear", cloudy.mask).fit_report.patches
    # Without per-pixel masks only the patches without a single cloudy pixel were usable.
    whole = patches["valid"] - patches["partial"]
    assert patches["valid"] >= 0.8 * patches["total"]
    assert patches["partial"] >= 0.4 * patches["valid"]
    assert whole <= 0.6 * patches["valid"]


@pytest.mark.parametrize("method", list(BUDGETS))
def test_a_cloudy_date_fits_as_well_as_its_cloud_free_copy(dates, method):
    cloudy, clear = dates
    with_clouds = _fit(cloudy, method, cloudy.mask)
    cloud_free = _fit(clear, method)
    rmse = {
        name: float(score_against_truth(model, clear)["rmse_clear"].sel(stage="model").mean())
        for name, model in (("cloudy", with_clouds), ("clear", cloud_free))
    }
    assert rmse["cloudy"] <= 1.1 * rmse["clear"], rmse
    # The held-out metrics leave the masked pixels out too: a bright cloud scored as a
    # target would dominate the RMSE (clouds are ~0.5 brighter than the ground).
    scored = with_clouds.metrics.sel(metric="rmse", stage="model")
    assert float(scored.max()) < 0.02


def test_unmasked_clouds_in_the_reference_spoil_the_fit(dates):
    # The converse: the same clouds left unmasked do harm, so the test above measures the
    # masking and not a scene that clouds cannot disturb.
    cloudy, clear = dates
    unmasked = _fit(cloudy, "linear")
    masked = _fit(cloudy, "linear", cloudy.mask)
    bad, good = (
        float(score_against_truth(m, clear)["rmse_clear"].sel(stage="model").mean())
        for m in (unmasked, masked)
    )
    assert bad > 2 * good


def test_the_mask_margin_leaves_out_the_blur_around_clouds(dates):
    cloudy, _ = dates
    model = _fit(cloudy, "linear", cloudy.mask)
    samples = model.fit_report.samples
    assert np.isfinite(samples["target"]).all()
    # The sampled target pixels are clear ground: none carries a cloud's brightness.
    assert float(samples["target"].max()) < 0.7
    assert sampling.MIN_CLEAR == pytest.approx(0.25)
