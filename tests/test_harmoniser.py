import pickle

import numpy as np
import pytest
import torch
import xarray as xr

import xharmonise
from xharmonise.errors import ModelFileError
from xharmonise.simulate import simulate_pair


@pytest.fixture(scope="module")
def pair():
    return simulate_pair((400, 400), seed=12, toa=True, nodata_border=10, chunks=128)


@pytest.mark.parametrize(
    ("method", "variance"), [("linear", False), ("calibnet", True), ("bcnet", False)]
)
def test_save_load_predict_is_bit_identical(pair, tmp_path, method, variance):
    model = xharmonise.fit(
        pair.src,
        pair.ref,
        method=method,
        variance=variance,
        iterations=10,
        patch_size=16,
        progress=False,
    )
    path = model.save(tmp_path / "model.safetensors")
    back = xharmonise.load(path)
    assert (back.method, back.variance, back.factor) == (method, variance, model.factor)
    assert back.src_bands == model.src_bands and back.ref_bands == model.ref_bands
    np.testing.assert_array_equal(back.linear, model.linear)
    np.testing.assert_array_equal(back.metrics.values, model.metrics.values)
    # The report's scatter samples travel with the model; the variance sample only with a head.
    expected = {"target", "initial", "linear", "model"} | ({"variance"} if variance else set())
    assert set(back.samples) == expected
    for name, values in model.samples.items():
        np.testing.assert_array_equal(back.samples[name], values)
    a = xharmonise.predict(pair.src, model)
    b = xharmonise.predict(pair.src, back)
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values)
    assert not list(tmp_path.glob(".*.tmp"))


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_payload_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "executed"
    for writer in (pickle.dump, torch.save):
        path = tmp_path / f"evil-{writer.__name__}.safetensors"
        with open(path, "wb") as f:
            writer(_Payload(str(marker)), f)
        with pytest.raises(ModelFileError, match="pickles are refused"):
            xharmonise.load(path)
        assert not marker.exists()


def test_truncated_corrupted_and_foreign_files(pair, tmp_path):
    model = xharmonise.fit(pair.src, pair.ref, method="linear", patch_size=16)
    good = model.save(tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "short.safetensors").write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        xharmonise.load(tmp_path / "short.safetensors")
    (tmp_path / "noise.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelFileError):
        xharmonise.load(tmp_path / "noise.safetensors")
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(3)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ModelFileError, match="not an xharmonise model"):
        xharmonise.load(tmp_path / "foreign.safetensors")
    with pytest.raises(ModelFileError, match="no model file"):
        xharmonise.load(tmp_path / "missing.safetensors")


def test_bcnet_filters_and_shift_follow_the_filter_centroid(pair):
    model = xharmonise.fit(
        pair.src, pair.ref, method="bcnet", iterations=2, patch_size=16, progress=False
    )
    filters = model.filters
    assert filters.dims == ("band", "ky", "kx") and filters.sizes["band"] == 4
    np.testing.assert_allclose(filters.sum(("ky", "kx")), 1.0, rtol=1e-5)
    # BCNet fits measure the phase-correlation shift too (not applied), for the cross-check.
    assert model.coregistration is not None and not model.coregistration["applied"]
    # Move every filter's weight one source pixel east (+x) and two north (-y): the
    # shift table must read +2 m east and +4 m north.
    net = model.net
    k = torch.from_numpy(np.roll(net.filters(), shift=(-2, 1), axis=(1, 2)).copy())
    with torch.no_grad():
        net.log_kernels.copy_(torch.log(k.clamp_min(1e-30)).reshape(net.log_kernels.shape))
    shift = model.shift
    assert shift.dims == ("band", "axis", "estimate")
    assert list(shift["estimate"].values) == ["filter", "phase_correlation"]
    np.testing.assert_allclose(shift.sel(estimate="filter", axis="east"), 2.0, atol=0.25)
    np.testing.assert_allclose(shift.sel(estimate="filter", axis="north"), 4.0, atol=0.25)
    # The pair has no shift: phase correlation says so, per band.
    np.testing.assert_allclose(shift.sel(estimate="phase_correlation"), 0.0, atol=1.0)
    linear = xharmonise.fit(pair.src, pair.ref, method="linear", patch_size=16)
    with pytest.raises(AttributeError, match="bcnet only"):
        _ = linear.shift


def test_filter_and_phase_correlation_shifts_side_by_side_on_a_shifted_pair():
    # 4 m east, 2 m south = 2 and 1 source pixels. A short BCNet run barely moves its
    # filters; phase correlation reads the shift. Coregistered, the filter row adds the
    # applied shift back, so both rows measure the same displacement.
    shifted = simulate_pair((600, 600), seed=13, shift=(4.0, -2.0), chunks=128)
    model = xharmonise.fit(
        shifted.src,
        shifted.ref,
        method="bcnet",
        iterations=2,
        patch_size=16,
        progress=False,
        coregister=True,
    )
    shift = model.shift
    assert shift.attrs["applied"]
    pc = shift.sel(estimate="phase_correlation")
    np.testing.assert_allclose(pc.sel(axis="east"), 4.0, atol=0.5)
    np.testing.assert_allclose(pc.sel(axis="north"), -2.0, atol=0.5)
    filt = shift.sel(estimate="filter")
    np.testing.assert_allclose(filt, pc, atol=1.0)


def test_coregistration_survives_save_and_load(tmp_path):
    shifted = simulate_pair((600, 600), seed=14, shift=(-3.0, 2.0))
    model = xharmonise.fit(
        shifted.src, shifted.ref, method="linear", patch_size=16, coregister=True
    )
    back = xharmonise.load(model.save(tmp_path / "m.safetensors"))
    assert back.coregistration == model.coregistration
    est = back.shift_estimate
    assert (est.east, est.north) == (model.coregistration["east"], model.coregistration["north"])
    xr.testing.assert_identical(back.shift, model.shift)
    a = xharmonise.predict(shifted.src, model)
    b = xharmonise.predict(shifted.src, back)
    xr.testing.assert_identical(a, b)
