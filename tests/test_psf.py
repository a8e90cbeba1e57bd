import dask.array as da
import numpy as np
import pytest
import xarray as xr

from xharmonise import psf


@pytest.mark.parametrize("band", ["B2", "B3", "B4", "B8"])
def test_kernel_response_at_nyquist_matches_mtf(band):
    mtf = psf.S2_MTF[band]
    sigma = psf.sigma_from_mtf(mtf, 10.0, 2.0)
    kernel = psf.gaussian_kernel(sigma, 5, psf.kernel_margin(sigma, 5))
    assert psf.nyquist_response(kernel, 5) == pytest.approx(mtf, abs=0.01)


def test_sigmas_match_the_paper():
    # The paper quotes sigma = 2.46 / 2.55 / 2.72 / 2.76 PHR pixels for B2, B3, B4, B8.
    got = [psf.sigma_from_mtf(psf.S2_MTF[b], 10.0, 2.0) for b in ("B2", "B3", "B4", "B8")]
    np.testing.assert_allclose(got, [2.46, 2.55, 2.72, 2.76], atol=0.01)


def test_kernel_is_normalised_and_centred():
    k = psf.gaussian_kernel(2.5, 5, 6)
    assert k.sum() == pytest.approx(1.0)
    idx = np.arange(k.shape[0]) - (k.shape[0] - 1) / 2
    assert (k.sum(axis=0) * idx).sum() == pytest.approx(0.0, abs=1e-12)


def test_degrade_constant_is_constant_inside_and_nan_at_borders():
    x = np.full((2, 50, 60), 0.3, np.float32)
    out = psf.degrade_array(x, [2.46, 2.76], 5)
    assert out.shape == (2, 10, 12)
    margin = psf.kernel_margin(2.76, 5)
    ring = -(-margin // 5)
    np.testing.assert_allclose(out[:, ring:-ring, ring:-ring], 0.3, rtol=1e-6)
    assert np.isnan(out[:, 0]).all()


def test_degrade_equals_explicit_convolution():
    rng = np.random.default_rng(0)
    x = rng.random((1, 60, 60))
    sigma = 2.6
    out = psf.degrade_array(x, [sigma], 5)
    m = psf.kernel_margin(sigma, 5)
    k = psf.gaussian_kernel(sigma, 5, m)
    # Reference pixel (j, i) is the kernel-weighted sum centred on block (j, i).
    j, i = 5, 6
    window = x[0, 5 * j - m : 5 * j + 5 + m, 5 * i - m : 5 * i + 5 + m]
    assert out[0, j, i] == pytest.approx(float((window * k).sum()), rel=1e-10)


def test_degrade_nan_spreads_to_blocks_whose_window_touches_it():
    x = np.ones((1, 100, 100))
    x[0, 52, 52] = np.nan
    out = psf.degrade_array(x, [2.5], 5)
    m = psf.kernel_margin(2.5, 5)
    rows = [j for j in range(20) if 5 * j - m <= 52 < 5 * j + 5 + m]
    bad = np.argwhere(np.isnan(out[0]))
    inner = bad[(bad > 1).all(axis=1) & (bad < 18).all(axis=1)]
    assert sorted(set(inner[:, 0])) == rows


@pytest.mark.parametrize("chunks", [(4, 37, 23), (4, 50, 50), (4, 101, 64)])
def test_degrade_chunked_equals_unchunked(chunks):
    x = np.random.default_rng(1).random((4, 200, 150)).astype(np.float32)
    sigmas = [2.46, 2.55, 2.72, 2.76]
    expected = psf.degrade_array(x, sigmas, 5)
    lazy = psf.degrade_array(da.from_array(x, chunks=chunks), sigmas, 5)
    assert isinstance(lazy, da.Array)
    np.testing.assert_array_equal(lazy.compute(), expected)


def test_degrade_dataarray_coordinates_are_block_centres():
    x = xr.DataArray(
        np.zeros((1, 10, 20)),
        dims=("band", "y", "x"),
        coords={"band": ["B4"], "y": 100 - 2 * np.arange(10) - 1, "x": 2 * np.arange(20) + 1},
    )
    out = psf.degrade(x, [1.0], 5)
    np.testing.assert_allclose(out["x"].values, [5, 15, 25, 35])
    np.testing.assert_allclose(out["y"].values, [95, 85])


@pytest.mark.parametrize("chunks", [(4, 40, 35), (4, 100, 150), (4, 200, 150)])
def test_streamed_contributions_equal_degrade(chunks):
    x = np.random.default_rng(2).random((4, 200, 150)).astype(np.float32)
    x[1, 57, 33] = np.nan
    sigmas = [2.46, 2.55, 2.72, 2.76]
    expected = psf.degrade_array(x, sigmas, 5)
    contributions, assemble = psf.degrade_contributions(da.from_array(x, chunks=chunks), sigmas, 5)
    got = assemble(contributions.compute())
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got, expected, rtol=1e-5, equal_nan=True)
