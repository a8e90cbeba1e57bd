"""The paper's findings, reproduced on simulated pairs whose truth is known.

Michel & Inglada (2021): on surface reflectance a pixelwise MLP is as good as linear
regression; on TOA inputs it is better; BCNet's filter absorbs mis-registration, shows it
and, being dropped at inference, keeps the 2 m detail that ConvCalibNet blurs; with
unmasked clouds the variance head keeps the fit clean and maps the clouds.

Budgets: explicit and short, sized so that each test still fails when the mechanism it
checks is broken on purpose (``benchmarks/paper_mutants.py`` runs this module against an
MTF blur skipped, the variance head off, BCNet's filter frozen and BCNet's filter kept at
inference, and writes which tests failed to ``benchmarks/results/paper_mutants.json``).
The figures beside each bound were measured at that budget with one torch thread, as a
CI worker runs it. The pairs are 1000 x 1000 source pixels in memory, as after reading a
GeoTIFF: a lazy pair holds the same values and fits the same models to float rounding
(``test_api``), but every read would simulate it again.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import xharmonise
from xharmonise.errors import DetailLossWarning
from xharmonise.simulate import simulate_pair
from xharmonise.validation import score_against_truth

SHIFT = (3.0, -2.0)  # metres east, north: 1.5 and 1 source pixels at 2 m


def _mean_rmse(model: xharmonise.Harmoniser, stage: str) -> float:
    return float(model.metrics.sel(metric="rmse", stage=stage).mean())


def test_toc_calibnet_matches_linear_and_both_beat_initial(toc_pair):
    model = xharmonise.fit(
        toc_pair.src, toc_pair.ref, method="calibnet", iterations=1000, progress=False
    )
    initial, linear, calibnet = (_mean_rmse(model, s) for s in ("initial", "linear", "model"))
    # Surface reflectances are an affine function of each other here: nothing to gain.
    # Measured 1.10 at this budget (1.31 at 300 steps; 1.02 at the default budget, which
    # takes 218 s here: 5x this test).
    assert calibnet <= 1.2 * linear
    # Measured 0.14; 0.84 with the MTF blur skipped: the blur is what lets a 2 m source
    # match a 10 m reference at all.
    assert max(linear, calibnet) < 0.25 * initial


def test_toa_calibnet_beats_linear_by_ten_percent():
    pair = simulate_pair((1000, 1000), seed=3, toa=True)
    model = xharmonise.fit(pair.src, pair.ref, method="calibnet", iterations=1000, progress=False)
    linear, calibnet = _mean_rmse(model, "linear"), _mean_rmse(model, "model")
    # The spherical-albedo term bends the TOA relation; a pixelwise MLP follows it.
    # Measured 0.84 at this budget (1.07 at 300 steps: the bound needs a trained MLP).
    assert calibnet <= 0.9 * linear
    # The same holds at 2 m against the true reflectance, where no test split can flatter:
    # measured 0.00409 vs 0.00464. With the MTF blur skipped the MLP still beats the
    # linear map on the (equally blurless) test split, but at 2 m it is worse (0.0180 vs
    # 0.0158): it learned a mapping between mismatched resolutions.
    clear = score_against_truth(model, pair)["rmse_clear"].mean("band")
    assert float(clear.sel(stage="model")) < float(clear.sel(stage="linear"))


@pytest.fixture(scope="module")
def shifted_pair():
    return simulate_pair((1000, 1000), seed=7, toa=True, shift=SHIFT)


@pytest.fixture(scope="module")
def bcnet_model(shifted_pair):
    # The suite's default-budget fit: BCNet's default steps and schedule, on 16-pixel
    # patches (4x fewer pixels per step than the default 32; 113 s here instead of about
    # 250 s). The filter needs the steps to move 1.5 pixels (after 2000 it was still 0.42
    # pixel off), not the pixels.
    return xharmonise.fit(
        shifted_pair.src, shifted_pair.ref, method="bcnet", patch_size=16, progress=False
    )


def test_bcnet_filters_recover_the_shift(bcnet_model):
    shift = bcnet_model.shift.sel(estimate="filter", axis=["east", "north"]).values  # metres
    error_px = np.hypot(shift[:, 0] - SHIFT[0], shift[:, 1] - SHIFT[1])
    error_px /= bcnet_model.src_pixel_size
    # Measured 0.10 pixel at most; with the filter frozen it stays at the initial centre,
    # the whole shift (1.8 pixels) away.
    assert (error_px < 0.3).all(), f"shift {shift.tolist()} m, truth {SHIFT}"


def test_bcnet_keeps_2m_detail_where_convcalibnet_blurs_it(shifted_pair, bcnet_model):
    conv = xharmonise.fit(
        shifted_pair.src, shifted_pair.ref, method="convcalibnet", iterations=300, progress=False
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DetailLossWarning)
        bc, cc = (score_against_truth(m, shifted_pair) for m in (bcnet_model, conv))
    # The share of the true 2 m detail (above the S2 Nyquist frequency) carried over.
    # BCNet, its filter dropped at inference: within 0.045 of 1 on every band (measured);
    # the filter kept at inference blurs it away.
    np.testing.assert_allclose(bc["detail"].sel(stage="model"), 1.0, atol=0.07)
    # ConvCalibNet's band-mean detail share: 0.894 at 300 steps (0.914 at 1000; at the
    # default budget 0.887-0.904 over seeds and thread counts). It learns to blur early.
    assert float(cc["detail"].sel(stage="model").mean()) < 0.95
    # ConvCalibNet fits the shifted 10 m reference better than a pixelwise linear map
    # (measured 0.0069 vs 0.0093).
    assert _mean_rmse(conv, "model") < _mean_rmse(conv, "linear")


@pytest.fixture(scope="module")
def cloudy_pair():
    return simulate_pair((1000, 1000), seed=5, toa=True, src_clouds=0.1)


def test_variance_head_resists_unmasked_clouds_and_maps_them(cloudy_pair):
    models = {
        v: xharmonise.fit(
            cloudy_pair.src,
            cloudy_pair.ref,
            method="calibnet",
            variance=v,
            iterations=300,
            progress=False,
        )
        for v in (False, True)
    }
    with_head = xharmonise.predict(cloudy_pair.src, models[True])
    scores = {
        False: score_against_truth(models[False], cloudy_pair),
        True: score_against_truth(models[True], cloudy_pair, prediction=with_head),
    }
    plain = float(scores[False]["rmse_clear"].sel(stage="model").mean())
    robust = float(scores[True]["rmse_clear"].sel(stage="model").mean())
    # Measured 0.0160 vs 0.0197: the NLL lets the head take the clouds' residuals. With
    # the head off (no NLL) both fits are the same fit.
    assert robust < plain
    # Measured 0.92. Not proof of a trained head: an untrained one also ranks the bright
    # clouds first (0.95), so the head's scale is checked too.
    assert float(scores[True]["cloud_auc"]) >= 0.9
    # The head learned where its residuals are large: band-mean σ² is 6.1x larger on
    # cloudy than on clear pixels (median); untrained, 1.06x.
    variance = with_head["variance"].mean("band").values
    clouds = cloudy_pair.truth.src_clouds.values.astype(bool)
    assert np.median(variance[clouds]) > 3 * np.median(variance[~clouds])
