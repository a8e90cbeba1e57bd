"""Model files: release 0.1.0's load with their weights intact and predict what they did,
this format round-trips bit for bit,
unknown or damaged ones are refused by version, and fsspec URLs work like local paths."""

import dataclasses
import json
import os
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from conftest import BUCKET
from safetensors import safe_open
from safetensors.numpy import save_file

import xharmonise
from xharmonise.errors import InputTypeError, InputValueError, ModelFileError
from xharmonise.harmoniser import FORMAT, FORMATS_READ, Harmoniser, load, save
from xharmonise.models import method
from xharmonise.records import ShiftEstimate
from xharmonise.simulate import simulate_pair

DATA = Path(__file__).parent / "data"
V1_METHODS = ("linear", "calibnet", "bcnet", "convcalibnet")


@pytest.fixture(scope="module")
def io() -> dict[str, np.ndarray]:
    with np.load(DATA / "model-v1-io.npz") as f:
        return dict(f)


@pytest.fixture(scope="module")
def window(io) -> xr.DataArray:
    """The source window the 0.1.0 predictions were made on (tests/data/README.md)."""
    src = simulate_pair((120, 120), seed=3).src.isel(y=slice(0, 40), x=slice(0, 40))
    # The simulator still makes the same window, so the stored predictions apply to it.
    np.testing.assert_array_equal(src.values.astype(np.float32), io["src"])
    np.testing.assert_array_equal(src.y.values, io["y"])
    np.testing.assert_array_equal(src.x.values, io["x"])
    return src


def _predict(src: xr.DataArray, model: Harmoniser) -> xr.Dataset:
    warning = method(model.method).inference_warning
    if warning is None:
        return xharmonise.predict(src, model)
    with pytest.warns(xharmonise.DetailLossWarning):
        return xharmonise.predict(src, model)


def assert_as_stored(actual: np.ndarray, stored: np.ndarray) -> None:
    """``actual`` equal to a prediction stored by an earlier release, up to float32 kernels.

    The stored predictions were computed on an AVX2 CPU; on an AVX-512 one torch's float32
    kernels sum in another order and the same weights give up to 1.8e-7 (3 ulp at 0.5)
    away, measured. 1e-6 stays far below what a changed mapping moves: a weight or a
    normalisation read wrongly moves the output by 1e-3 or more.
    """
    np.testing.assert_allclose(actual, stored, rtol=0, atol=1e-6)


def _assert_predicts_like_0_1_0(model: Harmoniser, src: xr.DataArray, io: dict) -> None:
    out = _predict(src, model)
    stored = {k.split(".", 1)[1] for k in io if k.startswith(f"{model.method}.")}
    assert set(out.data_vars) == stored
    for name in stored:
        assert_as_stored(out[name].values, io[f"{model.method}.{name}"])


@pytest.mark.parametrize("name", V1_METHODS)
def test_release_0_1_0_files_load_and_predict_as_they_did(name, window, io):
    path = DATA / f"model-v1-{name}.safetensors"
    with safe_open(str(path), framework="numpy") as f:
        assert json.loads(f.metadata()["xharmonise"])["format"] == "xharmonise-model/1"
    model = xharmonise.load(path)
    assert model.method == name
    assert model.src_bands == ("B0", "B1", "B2", "B3")
    assert model.ref_bands == ("B2", "B3", "B4", "B8")
    assert (model.factor, model.grid.factor, model.src_pixel_size) == (5, 5, 2.0)
    assert model.grid.ref.crs.epsg == 32631 and tuple(model.grid.ref.shape) == (24, 24)
    assert model.fit_report.versions["xharmonise"] == "0.1.0"
    assert (model.shift_estimate, model.applied_shift) == (None, None)
    assert (model.net is None) == (not method(name).neural)
    _assert_predicts_like_0_1_0(model, window, io)


def _state(net: torch.nn.Module | None) -> dict[str, np.ndarray]:
    return {} if net is None else {k: v.numpy() for k, v in net.state_dict().items()}


def assert_same_model(a: Harmoniser, b: Harmoniser) -> None:
    """Every field of the mapping and the report equal, arrays bit for bit."""
    for field in dataclasses.fields(a.mapping):
        x, y = getattr(a.mapping, field.name), getattr(b.mapping, field.name)
        if field.name == "linear":
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(x, y)
        elif field.name == "net":
            sx, sy = _state(x), _state(y)
            assert sx.keys() == sy.keys() and (x is None) == (y is None)
            for k in sx:
                np.testing.assert_array_equal(sx[k], sy[k])
        else:
            assert x == y, field.name
    r, s = a.fit_report, b.fit_report
    xr.testing.assert_identical(r.metrics, s.metrics)
    assert (r.history, r.patches, r.versions) == (s.history, s.patches, s.versions)
    assert r.sampling == s.sampling
    assert r.samples.keys() == s.samples.keys()
    for k in r.samples:
        assert r.samples[k].dtype == s.samples[k].dtype
        np.testing.assert_array_equal(r.samples[k], s.samples[k])
    if r.shift_estimate is None:
        assert s.shift_estimate is None
    else:
        # As JSON text: the windows' NaN compare equal there, and floats print exactly.
        assert json.dumps(r.shift_estimate.to_dict()) == json.dumps(s.shift_estimate.to_dict())


def _estimate() -> ShiftEstimate:
    windows = pd.DataFrame(
        {
            "row": [0, 0, 32],
            "col": [0, 32, 0],
            "status": ["inlier", "inlier", "cloud"],
            "east": [3.1, 2.9, np.nan],
            "north": [-1.0, -1.2, np.nan],
        }
    )
    return ShiftEstimate(
        east=3.0,
        north=-1.1,
        pixel_size=10.0,
        confidence=1.0,
        std_error=0.1,
        bands={"B2": (3.05, -1.0), "B3": (2.95, -1.2)},
        windows=windows,
    )


def _coregistered(model: Harmoniser) -> Harmoniser:
    """``model`` as if fitted with coregister=True on a shifted pair."""
    est = _estimate()
    return Harmoniser(
        mapping=dataclasses.replace(model.mapping, applied_shift=(est.east, est.north)),
        fit_report=dataclasses.replace(model.fit_report, shift_estimate=est),
    )


@pytest.mark.parametrize("name", V1_METHODS)
@pytest.mark.parametrize("coregistered", [False, True])
def test_format_2_round_trip_is_identical(name, coregistered, window, io, tmp_path):
    model = xharmonise.load(DATA / f"model-v1-{name}.safetensors")
    if coregistered:
        model = _coregistered(model)
    path = model.save(tmp_path / "m.safetensors")
    with safe_open(str(path), framework="numpy") as f:
        meta = json.loads(f.metadata()["xharmonise"])
    assert meta["format"] == FORMAT == "xharmonise-model/2"
    assert set(meta) == {"format", "mapping", "fit_report", "saved_by"}
    assert meta["saved_by"]["xharmonise"] == version("xharmonise")
    back = xharmonise.load(path)
    assert_same_model(model, back)
    if coregistered:
        xr.testing.assert_identical(back.shift, model.shift)
        # predict moves the output by minus the applied shift; the values are those of 0.1.0.
        out = _predict(window, back)
        np.testing.assert_allclose(window.x.values - out.x.values, 3.0)
        assert_as_stored(out["prediction"].values, io[f"{name}.prediction"])
    else:
        _assert_predicts_like_0_1_0(back, window, io)


def _rewrite(src: Path, dst: Path, edit) -> Path:
    """Copy a model file with its metadata changed by ``edit(meta)``."""
    with safe_open(str(src), framework="numpy") as f:
        meta = json.loads(f.metadata()["xharmonise"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    edit(meta)
    save_file(tensors, str(dst), metadata={"xharmonise": json.dumps(meta)})
    return dst


def test_a_0_1_0_linear_model_saved_with_variance_loads_without_a_head(window, io, tmp_path):
    # 0.1.0's fit(method="linear", variance=True) saved variance=true with no network (its
    # predict gave all-NaN variance planes); such a file loads as the model it is.
    path = _rewrite(
        DATA / "model-v1-linear.safetensors", tmp_path / "m.safetensors",
        lambda m: m.update(variance=True),
    )  # fmt: skip
    model = xharmonise.load(path)
    assert model.variance is False and model.net is None
    out = xharmonise.predict(window, model)
    assert list(out.data_vars) == ["prediction"]
    np.testing.assert_array_equal(out["prediction"].values, io["linear.prediction"])


def test_a_0_1_0_coregistered_model_moves_its_output_as_it_did(io):
    # Format 1 kept the shift as coregistration = estimate + applied; read as applied_shift.
    model = xharmonise.load(DATA / "model-v1-linear-coregistered.safetensors")
    assert model.applied_shift == (model.shift_estimate.east, model.shift_estimate.north)
    assert model.applied_shift == pytest.approx((4.0, -3.0), abs=0.5)
    shifted = simulate_pair((600, 600), shift=(4.0, -3.0), seed=1)
    out = xharmonise.predict(shifted.src.isel(y=slice(0, 40), x=slice(0, 40)), model)
    np.testing.assert_array_equal(out["prediction"].values, io["linear-coregistered.prediction"])
    np.testing.assert_array_equal(out["x"].values, io["linear-coregistered.x"])
    np.testing.assert_array_equal(out["y"].values, io["linear-coregistered.y"])


@pytest.mark.parametrize("name", ["bcnet", "linear-coregistered"])
def test_release_0_2_0_files_load_and_predict_as_they_did(name, window, io):
    # Files of the current format, committed, so that a later change of format 2 shows.
    path = DATA / f"model-v2-{name}.safetensors"
    with safe_open(str(path), framework="numpy") as f:
        assert json.loads(f.metadata()["xharmonise"])["format"] == "xharmonise-model/2"
    model = xharmonise.load(path)
    if name == "bcnet":
        _assert_predicts_like_0_1_0(model, window, io)
        return
    shifted = simulate_pair((600, 600), shift=(4.0, -3.0), seed=1)
    out = xharmonise.predict(shifted.src.isel(y=slice(0, 40), x=slice(0, 40)), model)
    np.testing.assert_array_equal(out["prediction"].values, io["linear-coregistered.prediction"])
    np.testing.assert_array_equal(out["x"].values, io["linear-coregistered.x"])


def test_unknown_format_is_refused_naming_it_and_the_formats_read(tmp_path):
    v1 = DATA / "model-v1-linear.safetensors"
    future = _rewrite(
        v1, tmp_path / "m.safetensors", lambda m: m.update(format="xharmonise-model/99")
    )
    with pytest.raises(ModelFileError, match="format 'xharmonise-model/99'") as info:
        xharmonise.load(future)
    assert all(repr(f) in str(info.value) for f in FORMATS_READ)
    untagged = _rewrite(v1, tmp_path / "n.safetensors", lambda m: m.pop("format"))
    with pytest.raises(ModelFileError, match="format None; this release reads"):
        xharmonise.load(untagged)


@pytest.mark.parametrize(
    "field", ["src_dtype", "coregistration", "versions", "grid", "history", "net_config"]
)
def test_format_1_file_missing_a_field_is_refused_naming_the_version(field, tmp_path):
    # Every field release 0.1.0 wrote is required: none is papered over with a default.
    path = _rewrite(
        DATA / "model-v1-bcnet.safetensors", tmp_path / "m.safetensors", lambda m: m.pop(field)
    )
    with pytest.raises(ModelFileError, match=f"format 'xharmonise-model/1'.*no '{field}'"):
        xharmonise.load(path)


@pytest.mark.parametrize(
    ("part", "field"),
    [
        ("mapping", "applied_shift"),
        ("mapping", "src_dtype"),
        ("fit_report", "shift_estimate"),
        ("fit_report", "versions"),
        (None, "saved_by"),
    ],
)
def test_format_2_file_missing_a_field_is_refused_naming_the_version(part, field, tmp_path):
    v2 = xharmonise.load(DATA / "model-v1-linear.safetensors").save(tmp_path / "m.safetensors")

    def drop(meta):
        (meta if part is None else meta[part]).pop(field)

    path = _rewrite(v2, tmp_path / "damaged.safetensors", drop)
    where = "" if part is None else f"{part} "
    with pytest.raises(ModelFileError, match=f"format 'xharmonise-model/2'.*no {where}'{field}'"):
        xharmonise.load(path)


def test_damaged_values_are_refused(tmp_path):
    cases = {
        "bands": ("linear", lambda m: m.update(ref_bands=["B2"]), "do not pair up"),
        "method": ("convcalibnet", lambda m: m.update(method="unet"), "unknown method 'unet'"),
        "network": (
            "convcalibnet",
            lambda m: m["net_config"].update(n_bands=3),
            "not a convcalibnet of 4",
        ),
        "no network": ("bcnet", lambda m: m.update(net_config=None), "bcnet mapping without"),
        "grid": ("linear", lambda m: m["grid"].update(ref_shape=[24]), "'xharmonise-model/1'"),
        "factor": ("linear", lambda m: m.update(factor=4), "not the grid's"),
        "applied": ("linear", lambda m: m.update(coregistration={"east": 1.0}), "'applied'"),
    }
    for name, (source, edit, message) in cases.items():
        v1 = DATA / f"model-v1-{source}.safetensors"
        path = _rewrite(v1, tmp_path / f"{name}.safetensors", edit)
        with pytest.raises(ModelFileError, match=message):
            xharmonise.load(path)


@pytest.mark.parametrize("name", ["linear", "bcnet"])
def test_memory_urls_round_trip(name, window, io):
    model = xharmonise.load(DATA / f"model-v1-{name}.safetensors")
    url = f"memory://models/{name}.safetensors"
    assert save(model, url) == url
    assert model.save(url) == url  # overwrites, like a local path
    back = load(url)
    assert_same_model(model, back)
    _assert_predicts_like_0_1_0(back, window, io)
    with pytest.raises(ModelFileError, match="no model file at memory://models/missing"):
        load("memory://models/missing.safetensors")


def test_s3_round_trip(s3):
    model = xharmonise.load(DATA / "model-v1-bcnet.safetensors")
    url = f"s3://{BUCKET}/models/bcnet.safetensors"
    assert save(model, url, storage_options=s3) == url
    assert_same_model(model, load(url, storage_options=s3))


def test_bad_locations_are_refused_with_the_fix(tmp_path):
    model = xharmonise.load(DATA / "model-v1-linear.safetensors")
    with pytest.raises(InputValueError, match="storage_options= apply to fsspec URLs"):
        save(model, tmp_path / "m.safetensors", storage_options={"anon": True})
    with pytest.raises(InputTypeError, match="give a dict of fsspec options"):
        load("memory://m.safetensors", storage_options=[("anon", True)])
    with pytest.raises(ModelFileError, match="install its fsspec backend"):
        load("nosuchprotocol://bucket/m.safetensors")
    with pytest.raises(InputTypeError, match="give the model file's path"):
        save(model, 42)
    with pytest.raises(InputTypeError, match="give a Harmoniser"):
        save(model.mapping, tmp_path / "m.safetensors")
    with pytest.raises(ModelFileError, match="is a folder"):
        save(model, tmp_path)
    with pytest.raises(ModelFileError, match="does not exist: create the folder"):
        save(model, tmp_path / "missing" / "m.safetensors")
    # file:// URLs are local paths, written atomically.
    assert save(model, f"file://{tmp_path}/u.safetensors") == tmp_path / "u.safetensors"
    assert_same_model(model, load(tmp_path / "u.safetensors"))


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_local_files_get_the_permissions_the_umask_gives(umask, mode, tmp_path):
    model = xharmonise.load(DATA / "model-v1-linear.safetensors")
    old = os.umask(umask)
    try:
        path = model.save(tmp_path / "m.safetensors")
        (tmp_path / "plain").write_bytes(b"")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode == (tmp_path / "plain").stat().st_mode & 0o777
    assert not list(tmp_path.glob(".*.tmp"))


def test_loading_stays_torch_free_for_linear_models():
    # The package and a linear model load without torch: NumPy-only workers never pay for it.
    import subprocess
    import sys

    code = (
        "import sys, xharmonise; "
        f"m = xharmonise.load({str(DATA / 'model-v1-linear.safetensors')!r}); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    "name", ["model-v1-linear", "model-v2-bcnet", "model-v2-linear-coregistered"]
)
def test_files_saved_before_applicability_load_without_a_domain_and_say_so(name, window):
    model = xharmonise.load(DATA / f"{name}.safetensors")
    assert model.domain is None
    assert "applicability" not in _predict(window, model)
    with pytest.raises(InputValueError, match="saved before xharmonise measured applicability"):
        xharmonise.predict(window, model, with_applicability=True)


def test_a_fitted_domain_round_trips_and_a_damaged_one_is_refused(tmp_path):
    pair = simulate_pair((200, 200), seed=0)
    model = xharmonise.fit(pair.src, pair.ref, method="linear", patch_size=8)
    back = xharmonise.load(model.save(tmp_path / "m.safetensors"))
    assert_same_model(model, back)
    assert back.domain == model.domain and back.domain is not None

    def negative_weights(meta: dict) -> None:
        domain = meta["mapping"]["domain"]
        domain["weights"] = [-w for w in domain["weights"]]

    path = _rewrite(tmp_path / "m.safetensors", tmp_path / "bad.safetensors", negative_weights)
    with pytest.raises(ModelFileError, match=r"damaged.*weights must be positive"):
        xharmonise.load(path)


@pytest.mark.parametrize("name", [f"model-v1-{m}" for m in V1_METHODS] + ["model-v2-bcnet"])
def test_files_saved_before_fit_recorded_its_sampling_load_with_none(name, tmp_path):
    model = xharmonise.load(DATA / f"{name}.safetensors")
    assert model.sampling is None and model.fit_report.sampling is None
    # Saved again, the record stays unknown: null, not fit's defaults.
    path = model.save(tmp_path / "m.safetensors")
    with safe_open(str(path), framework="numpy") as f:
        assert json.loads(f.metadata()["xharmonise"])["fit_report"]["sampling"] is None
    assert xharmonise.load(path).sampling is None


def test_the_sampling_record_round_trips_and_a_damaged_one_is_refused(tmp_path):
    pair = simulate_pair((200, 200), seed=0)
    model = xharmonise.fit(
        pair.src, pair.ref, method="linear", patch_size=16, test_fraction=0.2, seed=3
    )
    record = {"patch_size": 16, "test_fraction": 0.2, "max_patches": None, "seed": 3}
    assert model.sampling == record
    back = xharmonise.load(model.save(tmp_path / "m.safetensors"))
    assert_same_model(model, back)
    assert back.sampling == record
    assert model.baseline().sampling == record  # the baseline comes from the same split
    cases = {
        "absent": (lambda r: r.pop("sampling"), None),
        "no seed": (lambda r: r["sampling"].pop("seed"), r"no fit_report sampling 'seed'"),
        "a string": (lambda r: r["sampling"].update(patch_size="16"), r"'patch_size' is '16'"),
        "out of range": (lambda r: r["sampling"].update(test_fraction=1.0), r"test_fraction=1"),
        "an extra key": (lambda r: r["sampling"].update(ring=2), r"exactly patch_size"),
    }
    for name, (edit, message) in cases.items():

        def in_report(meta: dict, edit=edit) -> None:
            edit(meta["fit_report"])

        path = _rewrite(tmp_path / "m.safetensors", tmp_path / f"{name}.safetensors", in_report)
        if message is None:
            assert xharmonise.load(path).sampling is None, name
        else:
            with pytest.raises(ModelFileError, match=message):
                xharmonise.load(path)


def test_a_report_refuses_a_sampling_record_fit_would_refuse():
    report = xharmonise.load(DATA / "model-v1-linear.safetensors").fit_report
    given = {"patch_size": 0, "test_fraction": 0.1, "max_patches": None, "seed": 0}
    with pytest.raises(InputValueError, match=r"patch_size=0 is not allowed"):
        dataclasses.replace(report, sampling=given)
    given["patch_size"] = np.int64(8)
    kept = dataclasses.replace(report, sampling=given)
    given["seed"] = 9  # the report holds its own copy, in plain Python values
    assert kept.sampling == {"patch_size": 8, "test_fraction": 0.1, "max_patches": None, "seed": 0}
    assert type(kept.sampling["patch_size"]) is int
