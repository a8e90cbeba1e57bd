import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.ndimage import gaussian_filter

from xharmonise import metrics
from xharmonise.metrics import high_frequency_energy, high_frequency_transfer, roc_auc


def _random(seed=0, shape=(3, 500)):
    rng = np.random.default_rng(seed)
    t = rng.normal(0.2, 0.1, shape)
    p = t + rng.normal(0.01, 0.03, shape)
    return t, p


def test_rmse_textbook():
    t, p = _random()
    expected = [
        np.sqrt(np.mean([(a - b) ** 2 for a, b in zip(t[i], p[i], strict=True)])) for i in range(3)
    ]
    np.testing.assert_allclose(metrics.rmse(t, p), expected)


def test_r2_textbook():
    t, p = _random(1)
    for i in range(3):
        ss_res = sum((a - b) ** 2 for a, b in zip(t[i], p[i], strict=True))
        mean = sum(t[i]) / len(t[i])
        ss_tot = sum((a - mean) ** 2 for a in t[i])
        assert metrics.r2(t, p)[i] == pytest.approx(1 - ss_res / ss_tot)


def test_explained_variance_ignores_bias_but_r2_does_not():
    t, _ = _random(2)
    p = t + 0.05
    np.testing.assert_allclose(metrics.explained_variance(t, p), 1.0)
    assert (metrics.r2(t, p) < 1.0).all()


def test_max_error_textbook():
    t, p = _random(3)
    np.testing.assert_allclose(metrics.max_error(t, p), np.abs(t - p).max(axis=1))


def test_nan_pixels_are_ignored_per_band():
    t, p = _random(4)
    t2, p2 = t.copy(), p.copy()
    t2[0, :10] = np.nan
    p2[1, 5] = np.inf
    assert metrics.rmse(t2, p2)[0] == pytest.approx(metrics.rmse(t[:1, 10:], p[:1, 10:])[0])
    assert metrics.rmse(t2, p2)[2] == pytest.approx(metrics.rmse(t, p)[2])


def test_metric_table_layout():
    t, p = _random(5, (2, 10, 10))
    table = metrics.metric_table(t, {"initial": p, "model": t}, ["B4", "B8"])
    assert table.dims == ("band", "metric", "stage")
    assert list(table["metric"].values) == ["rmse", "r2", "explained_variance", "max_error"]
    np.testing.assert_allclose(table.sel(stage="model", metric="rmse"), 0.0)
    np.testing.assert_allclose(table.sel(stage="initial", metric="rmse"), metrics.rmse(t, p))


@settings(max_examples=50, deadline=None)
@given(
    arrays(np.float64, (2, 20), elements=st.floats(-1, 1)),
    arrays(np.float64, (2, 20), elements=st.floats(-1, 1)),
)
def test_metric_identities(t, p):
    rmse = metrics.rmse(t, p)
    assert (rmse >= 0).all()
    assert (rmse <= metrics.max_error(t, p) + 1e-12).all()
    np.testing.assert_allclose(metrics.rmse(t, t), 0.0)


def test_roc_auc_equals_pairwise_count():
    rng = np.random.default_rng(4)
    scores = np.round(rng.normal(size=300), 1)  # rounded: ties happen and count one half
    labels = rng.random(300) < 0.3
    pos, neg = scores[labels], scores[~labels]
    diff = pos[:, None] - neg[None, :]
    brute = ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size
    assert roc_auc(scores, labels) == pytest.approx(brute, abs=1e-12)
    assert roc_auc(np.where(labels, 1.0, 0.0), labels) == 1.0
    with pytest.raises(ValueError, match="both positive and negative"):
        roc_auc(scores, np.ones(300, bool))


def test_high_frequency_energy_splits_the_spectrum_and_sees_blur():
    rng = np.random.default_rng(5)
    img = rng.normal(size=(2, 96, 80))
    window = np.outer(np.hanning(96), np.hanning(80))
    centred = (img - img.mean(axis=(1, 2), keepdims=True)) * window
    # Parseval: a cutoff below zero keeps the whole spectrum.
    np.testing.assert_allclose(
        high_frequency_energy(img, -1.0), (centred**2).sum(axis=(1, 2)), rtol=1e-10
    )
    blurred = gaussian_filter(img, sigma=(0, 2.5, 2.5))
    # White noise keeps most of its power above 0.1 cycles/px; a 2.5 px blur removes it.
    assert (high_frequency_energy(blurred, 0.1) < 0.01 * high_frequency_energy(img, 0.1)).all()
    with pytest.raises(ValueError, match="finite"):
        high_frequency_energy(np.where(img > 2, np.nan, img), 0.1)
    with pytest.raises(ValueError, match="differ"):
        high_frequency_transfer(img, img[:, 1:], 0.1)


def test_high_frequency_transfer_measures_blur_not_noise():
    rng = np.random.default_rng(6)
    detail = rng.normal(size=(2, 128, 128))
    noisy = 1.3 * detail + rng.normal(scale=0.5, size=detail.shape) + 4.0
    # A gain passes through, noise and offsets do not count.
    np.testing.assert_allclose(high_frequency_transfer(noisy, detail, 0.1), 1.3, atol=0.03)
    blurred = gaussian_filter(detail, sigma=(0, 1.0, 1.0))
    ratio = high_frequency_transfer(blurred, detail, 0.1)
    assert (ratio < 0.5).all()
