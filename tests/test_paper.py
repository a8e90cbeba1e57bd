"""The paper's findings, reproduced on simulated pairs whose truth is known.

Michel & Inglada (2021): on surface reflectance a pixelwise MLP is as good as linear
regression; on TOA inputs it is better; BCNet's filter absorbs mis-registration, shows it
and, being dropped at inference, keeps the 2 m detail that ConvCalibNet blurs; with
unmasked clouds the variance head keeps the fit clean and maps the clouds.

Budgets: the library's CPU defaults on 1000 x 1000 pixel pairs (about a minute or two
per model here), so these are marked slow; they are the acceptance tests of the models.
The pairs are in memory, as after reading a GeoTIFF: a lazy pair holds the same values and
fits the same models to float rounding (``test_api``), but every read would simulate it
again.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import xharmonise
from xharmonise.errors import DetailLossWarning
from xharmonise.simulate import simulate_pair
from xharmonise.validation import score_against_truth

pytestmark = pytest.mark.slow

SHIFT = (3.0, -2.0)  # metres east, north: 1.5 and 1 source pixels at 2 m


def _mean_rmse(model: xharmonise.Harmoniser, stage: str) -> float:
    return float(model.metrics.sel(metric="rmse", stage=stage).mean())


def test_toc_calibnet_matches_linear_and_both_beat_initial(toc_pair):
    model = xharmonise.fit(toc_pair.src, toc_pair.ref, method="calibnet", progress=False)
    initial, linear, calibnet = (_mean_rmse(model, s) for s in ("initial", "linear", "model"))
    # Surface reflectances are an affine function of each other here: nothing to gain.
    assert calibnet <= 1.1 * linear
    assert max(linear, calibnet) < 0.25 * initial


def test_toa_calibnet_beats_linear_by_ten_percent():
    pair = simulate_pair((1000, 1000), seed=3, toa=True)
    model = xharmonise.fit(pair.src, pair.ref, method="calibnet", progress=False)
    linear, calibnet = _mean_rmse(model, "linear"), _mean_rmse(model, "model")
    # The spherical-albedo term bends the TOA relation; a pixelwise MLP follows it.
    assert calibnet <= 0.9 * linear
    # The same holds at 2 m against the true reflectance, where no test split can flatter.
    clear = score_against_truth(model, pair)["rmse_clear"].mean("band")
    assert float(clear.sel(stage="model")) < float(clear.sel(stage="linear"))


@pytest.fixture(scope="module")
def shifted_pair():
    return simulate_pair((1000, 1000), seed=7, toa=True, shift=SHIFT)


@pytest.fixture(scope="module")
def bcnet_model(shifted_pair):
    return xharmonise.fit(shifted_pair.src, shifted_pair.ref, method="bcnet", progress=False)


def test_bcnet_filters_recover_the_shift(bcnet_model):
    shift = bcnet_model.shift.sel(estimate="filter", axis=["east", "north"]).values  # metres
    error_px = np.hypot(shift[:, 0] - SHIFT[0], shift[:, 1] - SHIFT[1])
    error_px /= bcnet_model.src_pixel_size
    assert (error_px < 0.3).all(), f"shift {shift.tolist()} m, truth {SHIFT}"


def test_bcnet_keeps_2m_detail_where_convcalibnet_blurs_it(shifted_pair, bcnet_model):
    conv = xharmonise.fit(shifted_pair.src, shifted_pair.ref, method="convcalibnet", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DetailLossWarning)
        bc, cc = (score_against_truth(m, shifted_pair) for m in (bcnet_model, conv))
    # The share of the true 2 m detail (above the S2 Nyquist frequency) carried over.
    np.testing.assert_allclose(bc["detail"].sel(stage="model"), 1.0, atol=0.05)
    # ConvCalibNet's band-mean detail share on this pair, default budget, measured over
    # training seeds and torch thread counts: 0.904 (seed 0, 1 thread), 0.897 (seed 1,
    # 1 thread), 0.9015 (a CI run, 2 threads); 0.887-0.901 on 2000² pairs. The bound sits
    # 0.046 above the largest of them (several times their spread) and meets BCNet's
    # lower bound: ConvCalibNet blurs, BCNet does not. (It was 0.9, inside the spread.)
    assert float(cc["detail"].sel(stage="model").mean()) < 0.95
    # ConvCalibNet fits the shifted 10 m reference better than the pixelwise models do.
    assert _mean_rmse(conv, "model") < _mean_rmse(bcnet_model, "linear")


@pytest.fixture(scope="module")
def cloudy_pair():
    return simulate_pair((1000, 1000), seed=5, toa=True, src_clouds=0.1)


def test_variance_head_resists_unmasked_clouds_and_maps_them(cloudy_pair):
    models = {
        v: xharmonise.fit(
            cloudy_pair.src, cloudy_pair.ref, method="calibnet", variance=v, progress=False
        )
        for v in (False, True)
    }
    scores = {v: score_against_truth(m, cloudy_pair) for v, m in models.items()}
    plain = float(scores[False]["rmse_clear"].sel(stage="model").mean())
    robust = float(scores[True]["rmse_clear"].sel(stage="model").mean())
    assert robust < plain
    assert float(scores[True]["cloud_auc"]) >= 0.9
