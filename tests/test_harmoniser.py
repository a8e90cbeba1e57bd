import dataclasses
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

import xharmonise
from xharmonise.errors import InputTypeError, InputValueError, ModelFileError, UnknownMethodError
from xharmonise.harmoniser import FitReport, Harmoniser, Mapping
from xharmonise.models import filter_shift
from xharmonise.records import ShiftEstimate
from xharmonise.simulate import simulate_pair

DATA = Path(__file__).parent / "data"


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
    assert back.grid == model.grid and back.sigmas == model.sigmas
    assert (back.history, back.patches) == (model.history, model.patches)
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
    assert model.shift_estimate is not None and model.applied_shift is None
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
    est = model.shift_estimate
    assert model.applied_shift == (est.east, est.north)
    assert back.applied_shift == model.applied_shift
    assert json.dumps(back.shift_estimate.to_dict()) == json.dumps(est.to_dict())
    xr.testing.assert_identical(back.shift, model.shift)
    a = xharmonise.predict(shifted.src, model)
    b = xharmonise.predict(shifted.src, back)
    xr.testing.assert_identical(a, b)


# Models saved by release 0.1.0 (tests/data/README.md): real fits, loaded without fitting.
@pytest.fixture(scope="module")
def v1():
    return {m: xharmonise.load(DATA / f"model-v1-{m}.safetensors") for m in ("linear", "bcnet")}


def test_harmoniser_is_frozen_and_forwards_to_its_mapping_and_report(v1):
    model = v1["bcnet"]
    for field in dataclasses.fields(Mapping):
        assert getattr(model, field.name) is getattr(model.mapping, field.name), field.name
    for field in dataclasses.fields(FitReport):
        assert getattr(model, field.name) is getattr(model.fit_report, field.name), field.name
    assert model.n_bands == 4 and model.src_pixel_size == 2.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.mapping = v1["linear"].mapping
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.mapping.method = "linear"
    with pytest.raises(AttributeError):
        model.method = "linear"
    # The report is a function of xharmonise.plot; the dict of the old shape is gone.
    assert not hasattr(model, "report") and not hasattr(model, "coregistration")
    assert repr(model).startswith("<Harmoniser bcnet +variance: ['B0', 'B1', 'B2', 'B3'] ->")
    with pytest.raises(InputTypeError, match="give a FitReport"):
        Harmoniser(mapping=model.mapping, fit_report=model.mapping)


def test_baseline_is_the_linear_mapping_of_the_same_fit(v1):
    model = v1["bcnet"]
    base = model.baseline()
    assert (base.method, base.net, base.variance) == ("linear", None, False)
    assert base.linear is model.linear and base.grid is model.grid
    assert base.applied_shift == model.applied_shift
    # Its report scores the baseline as the model: no network's numbers under its name.
    assert base.shift_estimate is model.shift_estimate and base.patches == model.patches
    rmse = base.metrics.sel(metric="rmse")
    np.testing.assert_array_equal(rmse.sel(stage="model"), rmse.sel(stage="linear"))
    assert not (model.metrics.sel(metric="rmse", stage="model") == rmse.sel(stage="model")).all()
    assert base.history == {} and "variance" not in base.samples
    np.testing.assert_array_equal(base.samples["model"], model.samples["linear"])
    assert (base.src_bands, base.ref_bands, base.sigmas) == (
        model.src_bands,
        model.ref_bands,
        model.sigmas,
    )
    # The same fit's linear coefficients are those of the linear fit of the same pair, so the
    # baseline predicts what release 0.1.0's linear model predicted (to float32 rounding:
    # the least squares' float64 sums differ by ~1e-15 between CPUs' vector units).
    with np.load(DATA / "model-v1-io.npz") as io:
        src = simulate_pair((120, 120), seed=3).src.isel(y=slice(0, 40), x=slice(0, 40))
        out = xharmonise.predict(src, base)
        np.testing.assert_allclose(out["prediction"].values, io["linear.prediction"], atol=1e-6)
    assert list(out.data_vars) == ["prediction"]


def _estimate() -> ShiftEstimate:
    return ShiftEstimate(
        east=3.0,
        north=-1.1,
        pixel_size=10.0,
        confidence=1.0,
        std_error=0.1,
        bands={"B2": (3.05, -1.0), "B3": (2.95, -1.2)},
        windows=pd.DataFrame({"status": ["inlier", "inlier"], "east": [3.1, 2.9]}),
    )


def test_shift_reads_the_filter_and_adds_the_applied_shift_back(v1):
    model = v1["bcnet"]
    # A 0.1.0 BCNet fit without a measured shift: the filter row alone, from the centroids.
    dy_dx = np.asarray(filter_shift(model.net.filters()))
    filter_row = np.stack([dy_dx[:, 1] * 2.0, -dy_dx[:, 0] * 2.0], axis=1)
    shift = model.shift
    assert list(shift["estimate"].values) == ["filter"] and not shift.attrs["applied"]
    np.testing.assert_array_equal(shift.sel(estimate="filter"), filter_row)
    est = _estimate()
    measured = Harmoniser(
        mapping=model.mapping,
        fit_report=dataclasses.replace(model.fit_report, shift_estimate=est),
    )
    # Bands the estimate does not cover fall back to its overall shift.
    per_band = np.array([[3.05, -1.0], [2.95, -1.2], [3.0, -1.1], [3.0, -1.1]])
    shift = measured.shift
    assert list(shift["estimate"].values) == ["filter", "phase_correlation"]
    assert not shift.attrs["applied"]
    np.testing.assert_array_equal(shift.sel(estimate="filter"), filter_row)
    np.testing.assert_array_equal(shift.sel(estimate="phase_correlation"), per_band)
    applied = Harmoniser(
        mapping=dataclasses.replace(model.mapping, applied_shift=(3.0, -1.1)),
        fit_report=measured.fit_report,
    )
    shift = applied.shift
    assert shift.attrs["applied"] and shift.attrs["units"] == "m"
    np.testing.assert_array_equal(shift.sel(estimate="filter"), filter_row + np.array([3.0, -1.1]))
    np.testing.assert_array_equal(shift.sel(estimate="phase_correlation"), per_band)
    # A linear model has a shift only when one was measured, and never filters.
    linear = v1["linear"]
    with pytest.raises(AttributeError, match="bcnet only"):
        _ = linear.shift
    with pytest.raises(AttributeError, match="no learned filters"):
        _ = linear.filters
    measured_linear = Harmoniser(mapping=linear.mapping, fit_report=measured.fit_report)
    assert list(measured_linear.shift["estimate"].values) == ["phase_correlation"]


def test_mapping_refuses_fields_that_do_not_fit(v1):
    linear, bcnet = v1["linear"].mapping, v1["bcnet"].mapping
    cases = [
        (dict(linear=np.zeros((4, 4))), "not (4, 5)"),
        (dict(ref_bands=("B2", "B3")), "do not pair up"),
        (dict(src_bands="B0B1B2B3"), "give sequences of band names"),
        (dict(sigmas=(1.0, 2.0)), "4 positive numbers"),
        (dict(factor=4), "not the grid's"),
        (dict(net=bcnet.net), "linear mapping with a network"),
        (dict(variance=True), "variance needs a network"),
        (dict(applied_shift=(1.0,)), "not (east, north)"),
        (dict(applied_shift=(1.0, float("nan"))), "not (east, north)"),
        (dict(src_dtype="pixels"), "no dtype"),
        (dict(grid=bcnet.grid.to_json()), "give a PairGrid"),
    ]
    for change, message in cases:
        with pytest.raises(InputValueError, match=re.escape(message)):
            dataclasses.replace(linear, **change)
    with pytest.raises(InputValueError, match="bcnet mapping without a network"):
        dataclasses.replace(bcnet, net=None)
    with pytest.raises(InputValueError, match=re.escape("variance) is ('bcnet', 4, True), not")):
        dataclasses.replace(bcnet, variance=False)
    with pytest.raises(UnknownMethodError, match="unknown method 'unet'"):
        dataclasses.replace(linear, method="unet")
    # Sequences are normalised to tuples of the right kind.
    m = dataclasses.replace(linear, src_bands=["B0", "B1", "B2", "B3"], applied_shift=[1, 2])
    assert m.src_bands == ("B0", "B1", "B2", "B3") and m.applied_shift == (1.0, 2.0)


def test_fit_report_refuses_fields_of_the_wrong_kind(v1):
    report = v1["linear"].fit_report
    with pytest.raises(InputValueError, match=r"give an xarray\.DataArray"):
        dataclasses.replace(report, metrics=report.metrics.values)
    with pytest.raises(InputValueError, match="give a ShiftEstimate or None"):
        dataclasses.replace(report, shift_estimate=_estimate().to_dict())
    with pytest.raises(InputValueError, match="samples holds values that are not arrays"):
        dataclasses.replace(report, samples={"target": [1.0]})
