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
    # One 32 x 32 patch's pixels per step (a quarter of the CPU default): the MLP's
    # figures below are those of the default pixel batch at this step count.
    model = xharmonise.fit(
        toc_pair.src, toc_pair.ref, method="calibnet", iterations=1000, batch_size=1,
        progress=False,
    )  # fmt: skip
    initial, linear, calibnet = (_mean_rmse(model, s) for s in ("initial", "linear", "model"))
    # Surface reflectances are an affine function of each other here: nothing to gain.
    # Measured 1.06-1.10 over seeds 0-4 (1.10 with 4 patches per step; 1.31 at 300
    # steps; 1.02 at the default budget, 12x this test's time).
    assert calibnet <= 1.2 * linear
    # Measured 0.12-0.15 over seeds 0-4; 0.84 with the MTF blur skipped: the blur is what
    # lets a 2 m source match a 10 m reference at all.
    assert max(linear, calibnet) < 0.25 * initial


def test_toa_calibnet_beats_linear_at_2m():
    pair = simulate_pair((1000, 1000), seed=3, toa=True)
    model = xharmonise.fit(
        pair.src, pair.ref, method="calibnet", iterations=1000, batch_size=1, progress=False
    )
    # The spherical-albedo term bends the TOA relation; a pixelwise MLP follows it. Judged
    # at 2 m against the true reflectance: the test split's RMSE is mostly the reference's
    # noise, so its ratio wanders (0.87-0.98 over seeds 0-4 at this budget) where the
    # truth's does not. Measured 0.88 (0.85-0.88 over seeds 0-4; 0.87 at 1500 steps).
    # With the MTF blur skipped the MLP is worse than the linear map at 2 m (1.13; the
    # test split still says 0.89): it learned a mapping between mismatched resolutions.
    clear = score_against_truth(model, pair)["rmse_clear"].mean("band")
    assert float(clear.sel(stage="model")) < 0.92 * float(clear.sel(stage="linear"))
    # And it is not worse on the test split either (the spread above).
    assert _mean_rmse(model, "model") < _mean_rmse(model, "linear")


@pytest.fixture(scope="module")
def shifted_pair():
    return simulate_pair((1000, 1000), seed=7, toa=True, shift=SHIFT)


@pytest.fixture(scope="module")
def bcnet_model(shifted_pair):
    # The suite's default-budget fit: BCNet's default steps and schedule, on 8-pixel
    # patches (16x fewer pixels per step than the default 32; 25-28 s here instead of
    # about 250 s). The filter needs the steps to move 1.5 pixels (after 2000 it was
    # still 0.42 pixel off), not the pixels.
    return xharmonise.fit(
        shifted_pair.src, shifted_pair.ref, method="bcnet", patch_size=8, progress=False
    )


def test_bcnet_filters_recover_the_shift(bcnet_model):
    shift = bcnet_model.shift.sel(estimate="filter", axis=["east", "north"]).values  # metres
    error_px = np.hypot(shift[:, 0] - SHIFT[0], shift[:, 1] - SHIFT[1])
    error_px /= bcnet_model.src_pixel_size
    # Measured 0.16 pixel at most (0.21 over seeds 7-9; 0.10 on 16-pixel patches); with
    # the filter frozen it stays at the initial centre, the whole shift (1.8 pixels) away.
    assert (error_px < 0.3).all(), f"shift {shift.tolist()} m, truth {SHIFT}"


def test_bcnet_keeps_2m_detail_where_convcalibnet_blurs_it(shifted_pair, bcnet_model):
    conv = xharmonise.fit(
        shifted_pair.src, shifted_pair.ref, method="convcalibnet", iterations=300,
        batch_size=2, progress=False,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DetailLossWarning)
        bc, cc = (score_against_truth(m, shifted_pair) for m in (bcnet_model, conv))
    # The share of the true 2 m detail (above the S2 Nyquist frequency) carried over.
    # BCNet, its filter dropped at inference: within 0.071 of 1 on every band (measured
    # 0.93-0.98, seeds 7-9 alike; within 0.045 on 16-pixel patches); the filter kept at
    # inference blurs it away.
    np.testing.assert_allclose(bc["detail"].sel(stage="model"), 1.0, atol=0.1)
    # ConvCalibNet's band-mean detail share: 0.90 at 300 steps of 2 patches (0.90-0.92
    # over seeds 7-9; 0.894 with 8 patches per step, 0.914 at 1000 steps; at the default
    # budget 0.887-0.904 over seeds and thread counts). It learns to blur early.
    assert float(cc["detail"].sel(stage="model").mean()) < 0.95
    # ConvCalibNet fits the shifted 10 m reference better than a pixelwise linear map
    # (measured 0.0070 vs 0.0093; 0.65-0.75x over seeds 7-9).
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
            iterations=500,
            batch_size=1,
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
    # Measured 0.0172 vs 0.0214 (seeds 5 and 6: 0.0172-0.0176 vs 0.0214-0.0223; one
    # 32 x 32 patch's pixels per step): the NLL lets the head take the clouds' residuals.
    # With the head off (no NLL) both fits are the same fit.
    assert robust < plain
    # Measured 0.984-0.986. Not proof of a trained head: an untrained one also ranks the
    # bright clouds first (0.97), so the head's scale is checked too.
    assert float(scores[True]["cloud_auc"]) >= 0.9
    # The head learned where its residuals are large: band-mean σ² is 56-156x larger on
    # cloudy than on clear pixels (median; seeds 5 and 6); untrained, 1.09x.
    variance = with_head["variance"].mean("band").values
    clouds = cloudy_pair.truth.src_clouds.values.astype(bool)
    assert np.median(variance[clouds]) > 10 * np.median(variance[~clouds])
