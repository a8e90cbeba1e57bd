"""Tests for the neural models: shapes, variance head, BCNet filters, factory, configs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xharmonise.models import (
    BCNET_EXTRA_MARGIN,
    NEURAL_METHODS,
    BCNet,
    CalibNet,
    ConvCalibNet,
    build_model,
    filter_shift,
    positive_variance,
)
from xharmonise.psf import degrade_array, gaussian_kernel, kernel_margin

FACTOR = 5
SIGMAS_4 = [2.46, 2.6, 2.9, 2.2]


def _sigmas(n_bands: int) -> list[float]:
    return SIGMAS_4[:n_bands]


def _input_for(net: torch.nn.Module, n: int = 2, size: int = 8) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    side = size * net.factor + 2 * net.margin if net.method == "bcnet" else size
    return torch.rand(n, net.n_bands, side, side, generator=gen) * 0.5


@pytest.mark.parametrize("method", NEURAL_METHODS)
@pytest.mark.parametrize("n_bands", [3, 4])
@pytest.mark.parametrize("variance", [False, True])
def test_output_shapes(method: str, n_bands: int, variance: bool) -> None:
    net = build_model(method, n_bands, variance=variance, sigmas=_sigmas(n_bands), seed=0)
    assert (net.method, net.n_bands, net.variance) == (method, n_bands, variance)
    x = _input_for(net)
    pred, var = net.eval()(x)
    assert pred.shape == (2, n_bands, 8, 8)
    if variance:
        assert var is not None and var.shape == pred.shape
        assert bool((var > 0).all())
    else:
        assert var is None


@pytest.mark.parametrize("n_bands", [3, 4])
def test_calibnet_pixel_matrix_and_image_paths_agree(n_bands: int) -> None:
    net = build_model("calibnet", n_bands, variance=True, seed=0).eval()
    img = torch.rand(2, n_bands, 5, 6)
    pixels = img.permute(0, 2, 3, 1).reshape(-1, n_bands)
    pred_img, var_img = net(img)
    pred_px, var_px = net(pixels)
    assert pred_px.shape == (60, n_bands)
    torch.testing.assert_close(pred_img.permute(0, 2, 3, 1).reshape(-1, n_bands), pred_px)
    torch.testing.assert_close(var_img.permute(0, 2, 3, 1).reshape(-1, n_bands), var_px)
    assert net.pixelwise() is net


def test_residual_skip_gives_identity_when_last_layer_is_zero() -> None:
    net = CalibNet(4).eval()
    conv = ConvCalibNet(4).eval()
    with torch.no_grad():
        for layer in (net.fc3, conv.conv3):
            layer.weight.zero_()
            layer.bias.zero_()
    x = torch.rand(3, 4, 6, 6)
    torch.testing.assert_close(net(x)[0], x)
    torch.testing.assert_close(conv(x)[0], x)


def test_positive_variance_strictly_positive_even_for_huge_negative_inputs() -> None:
    z = torch.tensor([-1e38, -1e6, -30.0, 0.0, 1e6])
    var = positive_variance(z)
    assert bool((var > 0).all()) and bool(torch.isfinite(var).all())
    assert float(var[-2]) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("method", NEURAL_METHODS)
def test_model_variance_positive_with_saturated_head(method: str) -> None:
    net = build_model(method, 3, variance=True, sigmas=_sigmas(3), seed=0).eval()
    head = {"calibnet": "fc_var", "bcnet": "calib.fc_var", "convcalibnet": "conv_var"}
    layer = net.get_submodule(head[method])
    with torch.no_grad():
        layer.weight.fill_(-1e4)
        layer.bias.fill_(-1e30)
    _, var = net(_input_for(net))
    assert bool((var > 0).all()) and bool(torch.isfinite(var).all())


def test_convcalibnet_receptive_radius_matches_dependency_footprint() -> None:
    net = build_model("convcalibnet", 3, seed=0).eval()
    x = torch.rand(1, 3, 15, 15)
    bumped = x.clone()
    bumped[0, :, 7, 7] += 1.0
    changed = (net(bumped)[0] - net(x)[0]).abs().amax(dim=(0, 1)) > 0
    rows, cols = torch.nonzero(changed, as_tuple=True)
    r = net.receptive_radius
    assert r == 3
    assert int(rows.min()) == 7 - r and int(rows.max()) == 7 + r
    assert int(cols.min()) == 7 - r and int(cols.max()) == 7 + r
    with pytest.raises(NotImplementedError):
        net.pixelwise()


@pytest.mark.parametrize("n_bands", [3, 4])
def test_bcnet_filters_at_init_are_the_gaussians(n_bands: int) -> None:
    sigmas = _sigmas(n_bands)
    net = build_model("bcnet", n_bands, sigmas=sigmas)
    assert net.factor == FACTOR
    assert net.margin == kernel_margin(max(sigmas), FACTOR, extra=BCNET_EXTRA_MARGIN)
    f = net.filters()
    k = FACTOR + 2 * net.margin
    assert f.shape == (n_bands, k, k)
    np.testing.assert_allclose(f.sum(axis=(1, 2)), 1.0, atol=1e-6)
    expected = np.stack([gaussian_kernel(s, FACTOR, net.margin) for s in sigmas])
    np.testing.assert_allclose(f, expected, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(filter_shift(f), 0.0, atol=1e-5)


@pytest.mark.parametrize("extra", [0, BCNET_EXTRA_MARGIN])
def test_bcnet_initial_filtering_equals_degrade_array(extra: int) -> None:
    sigmas = _sigmas(4)
    margin = kernel_margin(max(sigmas), FACTOR, extra=extra)
    net = build_model("bcnet", 4, sigmas=sigmas, margin=margin).eval()
    n = 10
    x = np.random.default_rng(0).uniform(
        0.0, 0.6, (4, n * FACTOR + 2 * margin, n * FACTOR + 2 * margin)
    )
    x = x.astype(np.float32)
    out = net.degrade(torch.from_numpy(x)[None])[0].detach().numpy()
    # degrade_array pads NaN outside the array, so its valid interior is where the
    # Gaussian support stays inside the un-margined patch.
    interior = x[:, margin:-margin, margin:-margin]
    expected = degrade_array(interior, sigmas, FACTOR)
    valid = np.isfinite(expected)
    assert valid.sum() >= 4 * 4 * 4
    # With extra margin the learnable kernel keeps tails beyond degrade_array's ±3σ cut.
    tol = 1e-5 if extra == 0 else 5e-3
    np.testing.assert_allclose(out[valid], expected[valid], rtol=tol, atol=tol * 0.1)


def test_bcnet_pixelwise_on_degraded_input_equals_forward() -> None:
    sigmas = _sigmas(3)
    margin = kernel_margin(max(sigmas), FACTOR)
    net = build_model("bcnet", 3, sigmas=sigmas, margin=margin, variance=True, seed=0).eval()
    n = 10
    x = np.random.default_rng(1).uniform(
        0.0, 0.6, (3, n * FACTOR + 2 * margin, n * FACTOR + 2 * margin)
    )
    x = x.astype(np.float32)
    pred, var = net(torch.from_numpy(x)[None])
    degraded = degrade_array(x[:, margin:-margin, margin:-margin], sigmas, FACTOR)
    valid = np.isfinite(degraded).all(axis=0)
    pixels = torch.from_numpy(np.ascontiguousarray(degraded[:, valid].T))
    inner = net.pixelwise()
    assert isinstance(inner, CalibNet)
    p2, v2 = inner(pixels)
    valid_t = torch.from_numpy(valid)
    torch.testing.assert_close(p2, pred[0][:, valid_t].T, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(v2, var[0][:, valid_t].T, rtol=1e-4, atol=1e-5)


def test_bcnet_output_centred_on_source_blocks() -> None:
    # A single bright source pixel in block (2, 3) must peak at output pixel (2, 3).
    net = BCNet(1, [1.0], factor=FACTOR, margin=3).eval()
    n = 6
    x = torch.zeros(1, 1, n * FACTOR + 6, n * FACTOR + 6)
    x[0, 0, 3 + 2 * FACTOR + 2, 3 + 3 * FACTOR + 2] = 1.0
    out = net.degrade(x)[0, 0]
    assert out.shape == (n, n)
    assert divmod(int(out.argmax()), n) == (2, 3)
    with pytest.raises(ValueError, match="multiple"):
        net.degrade(torch.zeros(1, 1, n * FACTOR + 5, n * FACTOR + 5))


def _shifted_gaussian(sigma: float, size: int, dy: float, dx: float) -> np.ndarray:
    off = np.arange(size) - (size - 1) / 2.0
    gy = np.exp(-0.5 * ((off - dy) / sigma) ** 2)
    gx = np.exp(-0.5 * ((off - dx) / sigma) ** 2)
    k = np.outer(gy, gx)
    return k / k.sum()


def test_filter_shift_recovers_known_offsets() -> None:
    kernels = np.stack(
        [
            _shifted_gaussian(2.0, 31, 1.5, -0.7),
            _shifted_gaussian(1.0, 31, -2.0, 0.0),
            _shifted_gaussian(2.5, 31, 0.0, 0.0),
        ]
    )
    np.testing.assert_allclose(
        filter_shift(kernels), [[1.5, -0.7], [-2.0, 0.0], [0.0, 0.0]], atol=1e-6
    )
    # Scale does not matter, and a single 2-D kernel is accepted.
    np.testing.assert_allclose(filter_shift(3.0 * kernels[0]), [[1.5, -0.7]], atol=1e-6)


@pytest.mark.parametrize("method", NEURAL_METHODS)
@pytest.mark.parametrize("variance", [False, True])
def test_config_round_trip_through_json(method: str, variance: bool) -> None:
    net = build_model(method, 4, variance=variance, sigmas=_sigmas(4), hidden=24, seed=3)
    config = json.loads(json.dumps(net.config()))
    clone = build_model(**config, seed=4)
    assert clone.config() == net.config()
    clone.load_state_dict(net.state_dict())
    x = _input_for(net)
    a, va = net.eval()(x)
    b, vb = clone.eval()(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    if variance:
        torch.testing.assert_close(va, vb, rtol=0, atol=0)


def test_build_model_seed_is_reproducible_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a = build_model("calibnet", 3, seed=7).state_dict()
    b = build_model("calibnet", 3, seed=7).state_dict()
    c = build_model("calibnet", 3, seed=8).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["fc1.weight"], c["fc1.weight"])


def test_build_model_errors() -> None:
    with pytest.raises(ValueError, match="calibnet, convcalibnet, bcnet"):
        build_model("unet", 4)
    with pytest.raises(ValueError, match="sigmas"):
        build_model("bcnet", 4)
    with pytest.raises(ValueError, match="sigmas for"):
        build_model("bcnet", 4, sigmas=[1.0, 2.0])
