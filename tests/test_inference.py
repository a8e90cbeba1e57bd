"""The CalibNet inference kernel against the plain eager network."""

from __future__ import annotations

import functools

import dask
import dask.array as da
import numpy as np
import pytest
import torch
import xarray as xr

from xharmonise import inference
from xharmonise.grid import pair_grid
from xharmonise.harmoniser import FitReport, Harmoniser, Mapping
from xharmonise.inference import PixelKernel, _run_pixels, map_pixels
from xharmonise.models import build_model, network_spec
from xharmonise.simulate import simulate_pair

RTOL, ATOL = 1e-5, 1e-6


def _trained_like(net: torch.nn.Module) -> torch.nn.Module:
    # Non-trivial BatchNorm statistics and affine, so that folding them is tested.
    g = torch.Generator().manual_seed(1)
    norm = net.norm
    c = norm.num_features
    with torch.no_grad():
        norm.running_mean.copy_(torch.rand(c, generator=g) * 0.3)
        norm.running_var.copy_(0.005 + torch.rand(c, generator=g) * 0.05)
        norm.weight.copy_(0.5 + torch.rand(c, generator=g))
        norm.bias.copy_(torch.rand(c, generator=g) * 0.4 - 0.2)
    return net.eval()


@functools.cache
def _grid():
    pair = simulate_pair((100, 100), seed=0)
    return pair_grid(pair.src, pair.ref)


def _harmoniser(net: torch.nn.Module, method: str = "calibnet") -> Harmoniser:
    n = net.n_bands
    bands = tuple(f"B{i}" for i in range(n))
    mapping = Mapping(
        method=method,
        src_bands=bands,
        ref_bands=bands,
        factor=5,
        sigmas=(2.5,) * n,
        src_scale=1.0,
        src_offset=0.0,
        src_dtype="float32",
        linear=np.zeros((n, n + 1), np.float32),
        net=net,
        variance=bool(net.variance),
        grid=_grid(),
        applied_shift=None,
    )
    report = FitReport(
        metrics=xr.DataArray(np.zeros((n, 1, 1)), dims=("band", "metric", "stage")),
        history={},
        patches={},
        samples={},
        shift_estimate=None,
        versions={},
    )
    return Harmoniser(mapping=mapping, fit_report=report)


def test_repr_of_a_hand_built_model_without_metric_labels():
    # benchmarks/inference.py's first model had metrics without coordinates, and its repr
    # raised KeyError('metric'): the scores are left out instead.
    text = repr(_harmoniser(build_model("calibnet", 4, variance=True, seed=0).eval()))
    assert text.startswith("<Harmoniser calibnet +variance: ") and "RMSE" not in text


def _image(n_bands: int, shape: tuple[int, int] = (37, 53), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.uniform(0.0, 0.6, (n_bands, *shape)).astype(np.float32)
    img[:, :5, :7] = np.nan  # a no-data corner
    img[1, 20, 30] = np.nan  # one band missing in one pixel
    img[0, 10, 3] = np.inf
    return img


def _eager(net: torch.nn.Module, img: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    with torch.no_grad():
        pred, var = net(torch.from_numpy(np.nan_to_num(img, posinf=0.0))[None])
    bad = ~np.isfinite(img).all(axis=0)
    pred = np.where(bad, np.nan, pred[0].numpy())
    var = None if var is None else np.where(bad, np.nan, var[0].numpy())
    return pred, var


@pytest.mark.parametrize("n_bands", [3, 4])
@pytest.mark.parametrize("variance", [False, True])
def test_kernel_matches_eager_network(n_bands, variance):
    net = _trained_like(build_model("calibnet", n_bands, variance=variance, seed=0))
    img = _image(n_bands)
    out = map_pixels(img, _harmoniser(net))
    pred, var = _eager(net, img)
    np.testing.assert_allclose(out[:n_bands], pred, rtol=RTOL, atol=ATOL)
    assert np.isnan(out[:, ~np.isfinite(img).all(axis=0)]).all()
    if variance:
        np.testing.assert_allclose(out[n_bands:], var, rtol=RTOL, atol=ATOL)
        assert (out[n_bands:][np.isfinite(out[n_bands:])] > 0).all()
    else:
        assert np.isnan(out[n_bands:]).all()


@pytest.mark.parametrize("tile", [1, 7, 2048])
def test_kernel_tiles_do_not_matter(tile):
    net = _trained_like(build_model("calibnet", 4, variance=True, seed=2))
    x = np.random.default_rng(3).uniform(0, 0.5, (3000, 4)).astype(np.float32)
    pred, var = PixelKernel(net, tile=tile)(x)
    with torch.no_grad():
        ep, ev = net(torch.from_numpy(x))
    np.testing.assert_allclose(pred, ep.numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(var, ev.numpy(), rtol=RTOL, atol=ATOL)


def test_kernel_variance_is_positive_when_elu_saturates():
    net = build_model("calibnet", 3, variance=True, seed=0).eval()
    with torch.no_grad():
        net.fc_var.bias.fill_(-1e4)
    _, var = PixelKernel(net)(np.full((5, 3), 0.2, np.float32))
    assert (var > 0).all()
    np.testing.assert_allclose(var, 1e-6, rtol=1e-6)


def test_block_without_valid_pixels_is_all_nan():
    net = build_model("calibnet", 4, variance=True, seed=0).eval()
    block = np.full((4, 6, 9), np.nan, np.float32)
    out = _run_pixels(block, network_spec(net), 4)
    assert out.shape == (8, 6, 9) and out.dtype == np.float32
    assert np.isnan(out).all()


def test_bcnet_runs_its_pixelwise_calibnet():
    net = build_model("bcnet", 4, variance=True, sigmas=[2.4, 2.5, 2.6, 2.7], seed=0)
    _trained_like(net.pixelwise())
    net.eval()
    img = _image(4)
    out = map_pixels(img, _harmoniser(net, "bcnet"))
    pred, var = _eager(net.pixelwise(), img)
    np.testing.assert_allclose(out[:4], pred, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(out[4:], var, rtol=RTOL, atol=ATOL)


def test_threaded_dask_equals_numpy_and_restores_torch_threads():
    net = _trained_like(build_model("calibnet", 4, variance=True, seed=0))
    model = _harmoniser(net)
    img = _image(4, (130, 170))
    before = torch.get_num_threads()
    with dask.config.set(scheduler="threads", num_workers=2):
        lazy = map_pixels(da.from_array(img, chunks=(4, 50, 64)), model).compute()
    assert torch.get_num_threads() == before
    np.testing.assert_allclose(lazy, map_pixels(img, model), rtol=2e-6, atol=ATOL)
    np.testing.assert_array_equal(np.isnan(lazy), np.isnan(map_pixels(img, model)))


def test_equal_weights_build_one_kernel_and_new_weights_another():
    # The worker cache is keyed by the weights' digest: two models holding equal weights
    # in different network objects share one kernel; changed weights get their own.
    img = _image(3)
    net = _trained_like(build_model("calibnet", 3, seed=5)).eval()
    twin = build_model("calibnet", 3, seed=6).eval()
    twin.load_state_dict(net.state_dict())
    other = _trained_like(build_model("calibnet", 3, seed=7)).eval()
    digests = {network_spec(n)["digest"] for n in (net, twin, other)}
    assert len(digests) == 2
    inference._CACHE.clear()
    first = map_pixels(img, _harmoniser(net))
    kernels = {k for k in inference._CACHE if k.startswith("kernel:")}
    np.testing.assert_array_equal(map_pixels(img, _harmoniser(twin)), first)
    assert {k for k in inference._CACHE if k.startswith("kernel:")} == kernels
    assert len(kernels) == 1
    map_pixels(img, _harmoniser(other))
    assert len({k for k in inference._CACHE if k.startswith("kernel:")}) == 2
