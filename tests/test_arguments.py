"""Every public argument refused at and beyond its limits, by name, before any data is read.

Each row of the tables below calls one public entry point with one bad argument: of the
wrong type, just past its limit, or far past it. The inputs are Dask-backed and every
block records itself when computed, so a check that comes after the work shows as a
recorded read. Fit, predict and estimate_shift run the same rows through the
``.harmonise`` accessor too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np
import pytest
import rioxarray  # noqa: F401  (.rio)
import torch
import xarray as xr

import xharmonise
from xharmonise import checks
from xharmonise.errors import (
    BandMismatchError,
    DimensionError,
    GridError,
    HarmoniseError,
    InputTypeError,
    InputValueError,
    ModelFileError,
    UnknownMethodError,
)
from xharmonise.simulate import simulate_pair

SEED_MAX = checks.SEED_RANGE[1]


@dataclass
class Inputs:
    """Watched inputs: each Dask block appends its name to ``reads`` when computed."""

    reads: list[str] = field(default_factory=list)
    items: dict[str, Any] = field(default_factory=dict)

    def watch(self, arr: xr.DataArray, name: str) -> xr.DataArray:
        def record(block: np.ndarray) -> np.ndarray:
            self.reads.append(name)
            return block

        chunks = tuple(min(n, 64) for n in arr.shape)
        data = da.from_array(arr.values, chunks=chunks).map_blocks(
            record, dtype=arr.dtype, meta=np.array((), dtype=arr.dtype)
        )
        return arr.copy(data=data)

    def __getitem__(self, key: str) -> Any:
        return self.items[key]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    pair = simulate_pair((200, 200), seed=0)
    model = xharmonise.fit(pair.src, pair.ref, method="linear", patch_size=8, progress=False)
    w = Inputs()
    src, ref = w.watch(pair.src, "src"), w.watch(pair.ref, "ref")
    # A Sen2Cor-like SCL layer at 20 m over the reference, and a MAJA-like CLM at 10 m.
    codes = np.random.default_rng(0).integers(0, 12, (20, 20)).astype(np.uint8)
    x0, y0 = float(pair.ref.x[0]) + 5, float(pair.ref.y[0]) - 5
    scl = xr.DataArray(
        codes,
        dims=("y", "x"),
        coords={"y": y0 - 20 * np.arange(20), "x": x0 + 20 * np.arange(20)},
    ).rio.write_crs(pair.ref.rio.crs)
    clm = xr.zeros_like(pair.ref.isel(band=0, drop=True), dtype=np.uint8)
    w.items = {
        "src": src,
        "ref": ref,
        "mask": w.watch(pair.mask, "mask"),
        "model": model,
        # Lazy: its blocks read the watched source.
        "ds": xharmonise.predict(src, model),
        "scl": w.watch(scl, "scl"),
        "clm": w.watch(clm, "clm"),
        "tmp": tmp_path_factory.mktemp("arguments"),
    }
    return w


# Entry points: each takes the watched inputs, the way to call (free function or the
# accessor) and the bad argument.
def _fit(w: Inputs, via: str, kw: dict[str, Any]) -> Any:
    kw = {"method": "linear", "patch_size": 8, "progress": False, **kw}
    src, ref = kw.pop("src", w["src"]), kw.pop("ref", w["ref"])
    if via == "accessor":
        return src.harmonise.fit(ref, **kw)
    return xharmonise.fit(src, ref, **kw)


def _predict(w: Inputs, via: str, kw: dict[str, Any]) -> Any:
    src, model = kw.pop("src", w["src"]), kw.pop("model", w["model"])
    if via == "accessor":
        return src.harmonise.predict(model, **kw)
    return xharmonise.predict(src, model, **kw)


def _estimate_shift(w: Inputs, via: str, kw: dict[str, Any]) -> Any:
    src, ref = kw.pop("src", w["src"]), kw.pop("ref", w["ref"])
    if via == "accessor":
        return src.harmonise.estimate_shift(ref, **kw)
    return xharmonise.estimate_shift(src, ref, **kw)


def _to_zarr(w: Inputs, via: str, kw: dict[str, Any]) -> Any:
    ds = kw.pop("ds", w["ds"])
    store = kw.pop("store", f"memory://arguments/{len(w.reads)}-{id(kw)}.zarr")
    return xharmonise.to_zarr(ds, store, progress=kw.pop("progress", False), **kw)


def _load(w: Inputs, via: str, kw: dict[str, Any]) -> Any:
    return xharmonise.load(kw["path"](w["tmp"]) if callable(kw["path"]) else kw["path"])


def _save(w: Inputs, via: str, kw: dict[str, Any]) -> Any:
    return w["model"].save(kw["path"](w["tmp"]) if callable(kw["path"]) else kw["path"])


def _scl(w: Inputs, via: str, kw: dict[str, Any]) -> Any:
    return xharmonise.cloud_mask_from_scl(kw.pop("scl", w["scl"]), **kw)


def _clm(w: Inputs, via: str, kw: dict[str, Any]) -> Any:
    return xharmonise.cloud_mask_from_clm(kw.pop("clm", w["clm"]), **kw)


ENTRIES = {
    "fit": _fit,
    "predict": _predict,
    "estimate_shift": _estimate_shift,
    "to_zarr": _to_zarr,
    "load": _load,
    "save": _save,
    "cloud_mask_from_scl": _scl,
    "cloud_mask_from_clm": _clm,
}

# Arguments whose value is built from the watched inputs: name -> function of them.
W = {
    "src.values": lambda w: w["src"].data,
    "ref.values": lambda w: w["ref"].data,
    "src as (y, x, band)": lambda w: w["src"].transpose("y", "x", "band"),
    "mask.values": lambda w: w["mask"].data,
    "mask as Dataset": lambda w: w["mask"].to_dataset(name="mask"),
    "mask of strings": lambda w: w["mask"].astype(str),
    "mask as (x, y)": lambda w: w["mask"].transpose("x", "y"),
    "ds['prediction']": lambda w: w["ds"]["prediction"],
    "ds.to_array()": lambda w: w["ds"].to_array(),
    "scl.values": lambda w: w["scl"].data,
    "scl as float": lambda w: w["scl"].astype(np.float32),
    "scl, two layers": lambda w: xr.concat([w["scl"], w["scl"]], "band"),
    "clm as bool": lambda w: w["clm"] > 0,
    "like.values": lambda w: w["ref"].data,
}

TYPE, VALUE = InputTypeError, InputValueError

# (entry, argument, value, error, pattern the message must hold; default: "argument=").
# A value named in W is built from the watched inputs.
FLOW = [
    ("fit", "src", "src.values", TYPE, "the source is a dask.Array"),
    ("fit", "src", "src as (y, x, band)", DimensionError, "the source has dims"),
    ("fit", "ref", "ref.values", TYPE, "the reference is a dask.Array"),
    ("fit", "method", "nope", UnknownMethodError, "unknown method 'nope'"),
    ("fit", "method", 3, UnknownMethodError, "unknown method 3"),
    ("fit", "method", None, UnknownMethodError, "unknown method None"),
    ("fit", "variance", 1, TYPE, None),
    ("fit", "variance", "yes", TYPE, None),
    ("fit", "mask", "mask.values", TYPE, "the mask is a dask.Array"),
    ("fit", "mask", "mask as Dataset", TYPE, "the mask is a xarray.Dataset"),
    ("fit", "mask", "mask of strings", TYPE, "the mask holds <U"),
    ("fit", "mask", "mask as (x, y)", DimensionError, r"the mask has dims \('x', 'y'\)"),
    ("fit", "bands", "B2", TYPE, None),
    ("fit", "bands", 4, TYPE, None),
    ("fit", "bands", [], VALUE, "bands=.* is empty"),
    ("fit", "bands", {"B9": "B2"}, BandMismatchError, r"unknown band names \['B9'\] in bands="),
    ("fit", "bands", ["B2"], BandMismatchError, "bands= lists 1 reference bands"),
    ("fit", "scale", 0, VALUE, None),
    ("fit", "scale", -1e-4, VALUE, None),
    ("fit", "scale", -1e300, VALUE, None),
    ("fit", "scale", math.inf, VALUE, None),
    ("fit", "scale", math.nan, VALUE, None),
    ("fit", "scale", "1e-4", TYPE, None),
    ("fit", "scale", (1e-4, 0.0), VALUE, None),
    ("fit", "scale", (1e-4, 1e-4, 1e-4), VALUE, None),
    ("fit", "offset", math.nan, VALUE, None),
    ("fit", "offset", -math.inf, VALUE, None),
    ("fit", "offset", "-0.1", TYPE, None),
    ("fit", "offset", (None, "x"), TYPE, None),
    ("fit", "iterations", 0, VALUE, None),
    ("fit", "iterations", -(10**9), VALUE, None),
    ("fit", "iterations", 1.5, TYPE, None),
    ("fit", "iterations", "10", TYPE, None),
    ("fit", "batch_size", 0, VALUE, None),
    ("fit", "batch_size", -1, VALUE, None),
    ("fit", "batch_size", 8.0, TYPE, None),
    ("fit", "patch_size", 0, VALUE, None),
    ("fit", "patch_size", -(10**9), VALUE, None),
    ("fit", "patch_size", 8.0, TYPE, None),
    ("fit", "patch_size", True, TYPE, None),
    ("fit", "test_fraction", 1, VALUE, None),
    ("fit", "test_fraction", 1.5, VALUE, None),
    ("fit", "test_fraction", -0.01, VALUE, None),
    ("fit", "test_fraction", math.nan, VALUE, None),
    ("fit", "test_fraction", "0.1", TYPE, None),
    ("fit", "max_patches", 0, VALUE, None),
    ("fit", "max_patches", -(10**9), VALUE, None),
    ("fit", "max_patches", 10.0, TYPE, None),
    ("fit", "seed", -1, VALUE, None),
    ("fit", "seed", SEED_MAX + 1, VALUE, None),
    ("fit", "seed", 10**100, VALUE, None),
    ("fit", "seed", 1.5, TYPE, None),
    ("fit", "seed", "0", TYPE, None),
    ("fit", "device", "tpu", VALUE, None),
    ("fit", "device", "cuda:", VALUE, None),
    ("fit", "device", "", VALUE, None),
    ("fit", "device", 0, TYPE, None),
    ("fit", "device", torch.device("cpu"), TYPE, None),
    ("fit", "progress", 1, TYPE, None),
    ("fit", "progress", None, TYPE, None),
    ("fit", "coregister", 1, TYPE, None),
    ("fit", "coregister", "yes", TYPE, None),
    ("fit", "coregister", None, TYPE, None),
    ("predict", "src", "src.values", TYPE, "the source is a dask.Array"),
    ("predict", "model", None, TYPE, "model is a NoneType"),
    ("predict", "model", "model.safetensors", TYPE, "model is a str.*xharmonise.load"),
    ("predict", "model", {"method": "linear"}, TYPE, "model is a dict"),
    ("predict", "with_variance", 1, TYPE, None),
    ("predict", "with_variance", "yes", TYPE, None),
    ("predict", "scale", 0, VALUE, None),
    ("predict", "scale", -1e300, VALUE, None),
    ("predict", "scale", math.inf, VALUE, None),
    ("predict", "scale", "1e-4", TYPE, None),
    ("predict", "scale", (1e-4, 1e-4), TYPE, None),
    ("predict", "offset", math.nan, VALUE, None),
    ("predict", "offset", "0", TYPE, None),
    ("estimate_shift", "src", "src.values", TYPE, "the source is a dask.Array"),
    ("estimate_shift", "ref", "ref.values", TYPE, "the reference is a dask.Array"),
    ("estimate_shift", "mask", "mask.values", TYPE, "the mask is a dask.Array"),
    ("estimate_shift", "bands", "B2", TYPE, None),
    ("estimate_shift", "scale", 0, VALUE, None),
    ("estimate_shift", "offset", "x", TYPE, None),
    ("estimate_shift", "window", 1, VALUE, None),
    ("estimate_shift", "window", -(10**9), VALUE, None),
    ("estimate_shift", "window", 24.0, TYPE, None),
    ("estimate_shift", "max_windows", 0, VALUE, None),
    ("estimate_shift", "max_windows", -5, VALUE, None),
    ("estimate_shift", "max_windows", "64", TYPE, None),
    ("estimate_shift", "max_shift", 0, VALUE, None),
    ("estimate_shift", "max_shift", -1e300, VALUE, None),
    ("estimate_shift", "max_shift", math.nan, VALUE, None),
    ("estimate_shift", "max_shift", math.inf, VALUE, None),
    ("estimate_shift", "max_shift", "4", TYPE, None),
    ("estimate_shift", "min_windows", 0, VALUE, None),
    ("estimate_shift", "min_windows", 2.0, TYPE, None),
    ("estimate_shift", "seed", -1, VALUE, None),
    ("estimate_shift", "seed", SEED_MAX + 1, VALUE, None),
    ("estimate_shift", "seed", None, TYPE, None),
]

OUT = [
    ("to_zarr", "ds", "ds['prediction']", TYPE, "ds is a xarray.DataArray.*to_dataset"),
    ("to_zarr", "ds", "ds.to_array()", TYPE, "ds is a xarray.DataArray"),
    ("to_zarr", "ds", None, TYPE, "ds is a NoneType"),
    ("to_zarr", "store", 123, TYPE, None),
    ("to_zarr", "store", None, TYPE, None),
    ("to_zarr", "store", "", VALUE, None),
    ("to_zarr", "store", "  ", VALUE, None),
    ("to_zarr", "mode", "a", VALUE, None),
    ("to_zarr", "mode", "r", VALUE, None),
    ("to_zarr", "mode", 1, TYPE, None),
    ("to_zarr", "mode", None, TYPE, None),
    ("to_zarr", "resume", 1, TYPE, None),
    ("to_zarr", "storage_options", "anon", TYPE, None),
    ("to_zarr", "storage_options", [("anon", True)], TYPE, None),
    ("to_zarr", "inner_chunks", 0, VALUE, None),
    ("to_zarr", "inner_chunks", -(10**9), VALUE, None),
    ("to_zarr", "inner_chunks", 256.0, TYPE, None),
    ("to_zarr", "compression_level", 23, VALUE, None),
    ("to_zarr", "compression_level", -131073, VALUE, None),
    ("to_zarr", "compression_level", 10**9, VALUE, None),
    ("to_zarr", "compression_level", 3.0, TYPE, None),
    ("to_zarr", "compute", 1, TYPE, None),
    ("to_zarr", "progress", "yes", TYPE, None),
    ("load", "path", 123, TYPE, None),
    ("load", "path", None, TYPE, None),
    ("load", "path", b"model.safetensors", TYPE, None),
    ("load", "path", "", ModelFileError, None),
    ("load", "path", lambda tmp: tmp / "missing.safetensors", ModelFileError, "no model file"),
    ("load", "path", lambda tmp: tmp, ModelFileError, "no model file at"),
    ("save", "path", 123, TYPE, None),
    ("save", "path", None, TYPE, None),
    ("save", "path", "", ModelFileError, None),
    ("save", "path", lambda tmp: tmp, ModelFileError, "is a folder"),
    ("save", "path", lambda tmp: tmp / "no" / "m.safetensors", ModelFileError, "does not exist"),
    ("cloud_mask_from_scl", "scl", "scl.values", TYPE, "the SCL is a dask.Array"),
    ("cloud_mask_from_scl", "scl", None, TYPE, "the SCL is a NoneType"),
    ("cloud_mask_from_scl", "scl", "scl as float", TYPE, "the SCL holds float32"),
    ("cloud_mask_from_scl", "scl", "scl, two layers", DimensionError, "the SCL has 2 layers"),
    ("cloud_mask_from_scl", "classes", (12,), VALUE, r"classes holds \[12\]"),
    ("cloud_mask_from_scl", "classes", (-1, 10**9), VALUE, "classes holds"),
    ("cloud_mask_from_scl", "classes", (), VALUE, "classes is empty"),
    ("cloud_mask_from_scl", "classes", ("cloud",), TYPE, None),
    ("cloud_mask_from_scl", "classes", "9", TYPE, None),
    ("cloud_mask_from_scl", "classes", (True,), TYPE, None),
    ("cloud_mask_from_scl", "like", "like.values", TYPE, "like is a dask.Array"),
    ("cloud_mask_from_scl", "resolution", 0, VALUE, None),
    ("cloud_mask_from_scl", "resolution", -10.0, VALUE, None),
    ("cloud_mask_from_scl", "resolution", math.nan, VALUE, None),
    ("cloud_mask_from_scl", "resolution", math.inf, VALUE, None),
    ("cloud_mask_from_scl", "resolution", "10", TYPE, None),
    ("cloud_mask_from_scl", "resolution", 0.02 - 1e-9, GridError, "resolution=0.02 cuts"),
    ("cloud_mask_from_scl", "resolution", 1e-9, GridError, "resolution=1e-09 cuts"),
    ("cloud_mask_from_scl", "dilate", -1, VALUE, None),
    ("cloud_mask_from_scl", "dilate", xharmonise.masks.MAX_DILATE + 1, VALUE, None),
    ("cloud_mask_from_scl", "dilate", 10**9, VALUE, None),
    ("cloud_mask_from_scl", "dilate", 1.5, TYPE, None),
    ("cloud_mask_from_scl", "dilate", True, TYPE, None),
    ("cloud_mask_from_clm", "clm", "scl.values", TYPE, "the CLM is a dask.Array"),
    ("cloud_mask_from_clm", "clm", "clm as bool", TYPE, "the CLM holds bool"),
    ("cloud_mask_from_clm", "bits", (8,), VALUE, r"bits holds \[8\]"),
    ("cloud_mask_from_clm", "bits", (-1,), VALUE, r"bits holds \[-1\]"),
    ("cloud_mask_from_clm", "bits", (), VALUE, "bits is empty"),
    ("cloud_mask_from_clm", "bits", (0.0,), TYPE, None),
    ("cloud_mask_from_clm", "like", 10.0, TYPE, "like is a float"),
    ("cloud_mask_from_clm", "resolution", 0.0, VALUE, None),
    ("cloud_mask_from_clm", "dilate", -1, VALUE, None),
]


def _case_id(via: str, row: tuple) -> str:
    # A function's repr holds its address: name it by the message it must give instead,
    # so that every pytest-xdist worker collects the same test ids.
    value = f"<path: {row[4]}>" if callable(row[2]) else repr(row[2])
    return f"{via}-{row[0]}-{row[1]}={value}"


def _cases(rows: list[tuple], vias: tuple[str, ...]) -> list[Any]:
    return [
        pytest.param(*row, via, id=_case_id(via, row))
        for row in rows
        # The accessor's source is the object it hangs on: no bad src to give it.
        for via in (vias if row[0] in ACCESSOR and row[1] != "src" else ("free",))
    ]


ACCESSOR = ("fit", "predict", "estimate_shift")


def _value(w: Inputs, value: Any) -> Any:
    return W[value](w) if isinstance(value, str) and value in W else value


@pytest.mark.parametrize(
    ("entry", "arg", "value", "error", "pattern", "via"),
    _cases(FLOW, ("free", "accessor")) + _cases(OUT, ("free",)),
)
def test_refused_by_name_before_any_data_is_read(inputs, entry, arg, value, error, pattern, via):
    inputs.reads.clear()
    with pytest.raises(error, match=pattern or f"{arg}=") as info:
        ENTRIES[entry](inputs, via, {arg: _value(inputs, value)})
    assert isinstance(info.value, HarmoniseError)
    # Python's own ancestry, for code that catches the builtin errors.
    assert isinstance(info.value, ValueError if error is not InputTypeError else TypeError) or (
        error in (UnknownMethodError, ModelFileError, BandMismatchError, GridError)
    )
    assert inputs.reads == [], f"{entry} read {sorted(set(inputs.reads))} before refusing {arg}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:7"])
@pytest.mark.parametrize("via", ["free", "accessor"])
def test_cuda_without_cuda_is_refused_before_any_data_is_read(inputs, device, via):
    inputs.reads.clear()
    with pytest.raises(InputValueError, match=f"device='{device}' but CUDA is not available"):
        _fit(inputs, via, {"method": "calibnet", "device": device})
    assert inputs.reads == []


def test_one_pixel_training_steps_are_refused_before_any_data_is_read(inputs):
    inputs.reads.clear()
    with pytest.raises(InputValueError, match="batch_size=1 with patch_size=1"):
        _fit(inputs, "free", {"method": "calibnet", "batch_size": 1, "patch_size": 1})
    assert inputs.reads == []


def test_a_variance_head_on_a_method_without_one_is_refused_before_any_data_is_read(inputs):
    # It used to be refused only once the model was assembled, after sampling.
    inputs.reads.clear()
    with pytest.raises(InputValueError, match="method='linear' has no variance head"):
        _fit(inputs, "free", {"method": "linear", "variance": True})
    assert inputs.reads == []


def test_to_zarr_refuses_resume_with_mode_w_and_options_on_a_local_path(inputs, tmp_path):
    for kw, pattern in (
        ({"resume": True, "mode": "w"}, "resume=True .* mode='w'"),
        ({"store": str(tmp_path / "a.zarr"), "storage_options": {"anon": True}}, "local path"),
    ):
        inputs.reads.clear()
        with pytest.raises(InputValueError, match=pattern):
            _to_zarr(inputs, "free", dict(kw))
        assert inputs.reads == []
    assert not (tmp_path / "a.zarr").exists()  # nothing written either


# The limits themselves pass: the same checks, at the edge, let the call through.
@pytest.mark.parametrize(
    ("kw", "check"),
    [
        ({"patch_size": 1, "iterations": 1, "batch_size": 2, "max_patches": 1}, "fit"),
        ({"test_fraction": 0.0, "seed": 0}, "fit"),
        ({"test_fraction": 0.999, "seed": SEED_MAX}, "fit"),
        ({"device": "cpu"}, "fit"),
        ({"device": "auto"}, "fit"),
        ({"window": 2, "max_windows": 1, "max_shift": 1e-9, "min_windows": 1}, "shift"),
        ({"seed": SEED_MAX}, "shift"),
    ],
)
def test_values_at_the_limits_pass_the_checks(kw, check):
    from xharmonise import arguments

    if check == "fit":
        options = dict(
            method="calibnet",
            variance=False,
            iterations=None,
            batch_size=None,
            patch_size=32,
            test_fraction=0.1,
            max_patches=None,
            seed=0,
            device="auto",
            progress=True,
            coregister=False,
        )
        arguments.fit_options(**{**options, **kw})
    else:
        options = dict(window=None, max_windows=64, max_shift=4.0, min_windows=3, seed=0)
        arguments.shift_options(**{**options, **kw})


@pytest.mark.parametrize(
    ("kw"),
    [
        {"mode": "w", "inner_chunks": 1, "compression_level": -131072},
        {"mode": "w", "compression_level": 22, "compute": False},
    ],
)
def test_to_zarr_at_its_limits_writes(inputs, kw):
    ds = xr.Dataset({"prediction": (("band", "y", "x"), np.ones((1, 4, 4), "f4"))})
    out = xharmonise.to_zarr(ds, "memory://arguments/limits.zarr", progress=False, **kw)
    if out is not None:
        out.compute()
    back = xr.open_zarr("memory://arguments/limits.zarr")
    np.testing.assert_array_equal(back["prediction"].values, ds["prediction"].values)


@pytest.mark.parametrize(("kind", "kw"), [("scl", {"dilate": 0}), ("clm", {"bits": (7,)})])
def test_masks_at_their_limits_work_lazily(inputs, kind, kw):
    inputs.reads.clear()
    layer = inputs[kind]
    func = xharmonise.cloud_mask_from_scl if kind == "scl" else xharmonise.cloud_mask_from_clm
    mask = func(layer, resolution=10.0, **kw)
    assert inputs.reads == []  # lazy until asked
    # The SCL is at 20 m, the CLM at 10 m: both land on 10 m pixels.
    assert mask.dtype == bool and mask.sizes["y"] == layer.sizes["y"] * (2 if kind == "scl" else 1)
    mask = func(layer, dilate=xharmonise.masks.MAX_DILATE).compute()
    assert bool(mask.all()) == bool(func(layer).any())


def test_the_watch_sees_a_read(inputs):
    # The guard above proves something only if computing a watched input records it.
    inputs.reads.clear()
    xharmonise.predict(inputs["src"], inputs["model"])["prediction"][0, :8, :8].compute()
    assert inputs.reads == ["src"]
    inputs.reads.clear()
    _fit(inputs, "accessor", {"mask": inputs["mask"]})
    assert {"src", "ref", "mask"} <= set(inputs.reads)
