"""Fuzzing every public entry point: what users really hand over, and the one property.

Each entry point has a strategy of :class:`Case` (a readable description of one call: the
mutations applied to a small valid simulated pair, and the options) and the same check,
:func:`check`: the call ends in success or in a :class:`~xharmonise.HarmoniseError`
whose message is non-empty, says problem and fix, and names what was wrong; inputs are
never modified. ``tests/test_fuzz.py`` runs a few hundred examples per entry point in CI,
``benchmarks/fuzz.py`` thousands.

Examples are built by mutating a valid pair (40-120 source pixels, factor 5), so most of
them get past the first check and reach deep code.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import tempfile
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import fsspec
import numpy as np
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
from dask.delayed import Delayed
from hypothesis import strategies as st

import xharmonise
from xharmonise.errors import (
    CalibrationWarning,
    DetailLossWarning,
    HarmoniseError,
    OutOfDomainWarning,
    UnknownBandWarning,
)
from xharmonise.simulate import simulate_pair

__all__ = ["ENTRY_POINTS", "Case", "FuzzFailure", "check", "strategies"]

SIZES = (40, 60)
SEEDS = (0, 1)


# --------------------------------------------------------------------------- fixtures
@functools.cache
def _pair(size: int, seed: int, dtype: str = "float32"):
    return simulate_pair((size, size), seed=seed, dtype=dtype, ref_clouds=0.05)


@functools.cache
def _model(kind: str) -> xharmonise.Harmoniser:
    pair = _pair(60, 0, "uint16" if kind == "uint16" else "float32")
    method, variance = {
        "linear": ("linear", False),
        "uint16": ("linear", False),
        "calibnet": ("calibnet", True),
        "convcalibnet": ("convcalibnet", False),
        "bcnet": ("bcnet", False),
    }[kind]
    with dask.config.set(scheduler="synchronous"):
        return xharmonise.fit(
            pair.src,
            pair.ref,
            method=method,
            variance=variance,
            patch_size=2,
            iterations=2,
            batch_size=2,
            progress=False,
        )


@functools.cache
def _workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="xharmonise-fuzz-"))


@functools.cache
def _scl(seed: int) -> xr.DataArray:
    """A (1, y, x) uint8 20 m layer with every SCL class / CLM bit pattern, with a CRS."""
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 12, (6, 8)).astype(np.uint8)
    da_ = xr.DataArray(
        values[None],
        dims=("band", "y", "x"),
        coords={
            "band": [1],
            "y": 4800000.0 - 20.0 * (np.arange(6) + 0.5),
            "x": 500000.0 + 20.0 * (np.arange(8) + 0.5),
        },
        attrs={"_FillValue": 0, "AREA_OR_POINT": "Area"},
    )
    return da_.rio.write_crs("EPSG:32631")


# --------------------------------------------------------------------------- mutations
Op = tuple  # ("name", *params): readable in a falsifying example's repr

_INT_DTYPES = ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64")
_DTYPES = (*_INT_DTYPES, "float16", "float32", "float64", "bool", "complex64", "complex128")


def _cast(da_: xr.DataArray, dtype: str, scaled: bool) -> xr.DataArray:
    dt = np.dtype(dtype)
    if da_.dtype.kind == "c" and dt.kind != "c":
        da_ = da_.real  # as a user would: casting would warn (lazily, for Dask inputs)
    if dt.kind in "iu":
        k = 100 if dt.itemsize == 1 else 10_000
        info = np.iinfo(dt)
        out = (da_.astype("float64") * k).fillna(0).clip(info.min, info.max).round().astype(dt)
        if scaled:
            out.attrs.update(scale_factor=1.0 / k, _FillValue=0)
        return out
    if dt.kind == "b":
        return (da_.fillna(0) > 0.1).astype(bool)
    return da_.astype(dt)


def _apply(da_: Any, op: Op) -> Any:
    """One mutation; never modifies ``da_`` in place."""
    name, *p = op
    if not isinstance(da_, xr.DataArray):
        return da_
    if name == "transpose":
        dims = [d for d in p[0] if d in da_.dims] + [d for d in da_.dims if d not in p[0]]
        return da_.transpose(*dims)
    if name == "rename":
        return da_.rename({k: v for k, v in p[0].items() if k in da_.dims})
    if name == "expand":
        dim, n = p
        if dim in da_.dims:
            return da_
        out = da_.expand_dims({dim: n})
        return out.assign_coords({dim: np.arange(n)}) if dim == "time" else out
    if name == "astype":
        return _cast(da_, *p)
    if name == "attrs":
        key, value = p
        return da_.assign_attrs({key: value})
    if name == "reverse":
        (dim,) = p
        return da_.isel({dim: slice(None, None, -1)}) if dim in da_.dims else da_
    if name == "irregular":
        (dim,) = p
        if dim not in da_.dims or da_.sizes[dim] < 4:
            return da_
        keep = np.r_[0 : da_.sizes[dim] // 2, da_.sizes[dim] // 2 + 1 : da_.sizes[dim]]
        return da_.isel({dim: keep})
    if name == "drop_coord":
        (dim,) = p
        return da_.drop_vars(dim) if dim in da_.coords else da_
    if name == "nan_coord":
        (dim,) = p
        if dim not in da_.coords or da_.sizes[dim] < 2:
            return da_
        values = np.asarray(da_[dim].values, dtype=np.float64).copy()
        values[1] = np.nan
        return da_.assign_coords({dim: values})
    if name == "crs":
        (crs,) = p
        out = da_.drop_vars("spatial_ref") if "spatial_ref" in da_.coords else da_
        return out if crs is None else out.rio.write_crs(crs)
    if name == "band_labels":
        (labels,) = p
        if "band" not in da_.dims or da_.sizes["band"] != len(labels):
            return da_
        return da_.assign_coords(band=list(labels))
    if name == "chunk":
        (how,) = p
        if how == "one":
            return da_.chunk()
        if how == "ragged":
            return da_.chunk({d: 17 for d in da_.dims if d in ("y", "x")})
        if how == "band":
            return da_.chunk({d: 1 for d in da_.dims if d == "band"})
        return da_.chunk({d: 20 for d in da_.dims if d in ("y", "x")})
    if name == "values":
        (pattern,) = p
        if da_.dtype.kind not in "fc" or da_.size == 0:
            return da_
        out = da_.copy(deep=True)
        data = out.values
        flat = data.reshape(-1)
        if pattern == "nan_some":
            flat[:: max(1, flat.size // 7)] = np.nan
        elif pattern == "inf_some":
            flat[flat.size // 2] = np.inf
        elif pattern == "neg_inf":
            flat[0] = -np.inf
        elif pattern == "all_nan":
            flat[:] = np.nan
        elif pattern == "huge":
            flat[flat.size // 3] = 1e30
        elif pattern == "constant":
            flat[:] = 0.2
        return out.copy(data=data)
    if name == "size":
        dim, n = p
        return da_.isel({dim: slice(0, n)}) if dim in da_.dims else da_
    if name == "wrap":
        (how,) = p
        if how == "dataset":
            return da_.to_dataset(name="image")
        if how == "dataset2":
            return xr.Dataset({"a": da_, "b": da_})
        if how == "bands_as_vars" and "band" in da_.dims:
            return da_.to_dataset("band")
        if how == "numpy":
            return da_.values
        if how == "list":
            return da_.values.tolist()
        if how == "none":
            return None
        if how == "string":
            return "image.tif"
    return da_


def mutate(obj: Any, ops: list[Op]) -> Any:
    for op in ops:
        obj = _apply(obj, op)
    return obj


_NAN = float("nan")
_INF = float("inf")


def _raster_ops(*, dims: tuple[str, ...] = ("band", "y", "x"), wrap: bool = True):
    """Mutations of an image, as users produce them (one or a few at a time)."""
    extra = ("time", "lat", "lon", "z")
    op = st.one_of(
        st.tuples(st.just("transpose"), st.permutations((*dims,))),
        st.tuples(
            st.just("rename"),
            st.sampled_from(
                [
                    {"y": "lat", "x": "lon"},
                    {"y": "latitude", "x": "longitude"},
                    {"band": "bands"},
                    {"band": "channel"},
                    {"x": "X"},
                ]
            ),
        ),
        st.tuples(st.just("expand"), st.sampled_from(extra[:1] + extra[3:]), st.integers(1, 2)),
        st.tuples(st.just("astype"), st.sampled_from(_DTYPES), st.booleans()),
        st.tuples(
            st.just("attrs"),
            st.sampled_from(["scale_factor", "add_offset", "_FillValue", "nodata", "long_name"]),
            st.sampled_from(
                [0, 1, 1e-4, -1e-4, 0.5, _NAN, _INF, "x", None, (1, 2), ("a", "b"), 1e4]
            ),
        ),
        st.tuples(st.just("reverse"), st.sampled_from(dims)),
        st.tuples(st.just("irregular"), st.sampled_from(("y", "x"))),
        st.tuples(st.just("drop_coord"), st.sampled_from(dims)),
        st.tuples(st.just("nan_coord"), st.sampled_from(("y", "x"))),
        st.tuples(st.just("crs"), st.sampled_from([None, "EPSG:4326", "EPSG:3857", "EPSG:32632"])),
        st.tuples(
            st.just("band_labels"),
            st.sampled_from([(1, 2, 3, 4), ("B3", "B2", "B1", "B0"), ("a", "a", "b", "c")]),
        ),
        st.tuples(st.just("chunk"), st.sampled_from(["one", "ragged", "band", "even"])),
        st.tuples(
            st.just("values"),
            st.sampled_from(["nan_some", "inf_some", "neg_inf", "all_nan", "huge", "constant"]),
        ),
        st.tuples(st.just("size"), st.sampled_from(dims), st.sampled_from([0, 1, 2, 3, 12])),
    )
    ops = st.lists(op, min_size=1, max_size=3)
    if wrap:
        wrapping = st.sampled_from(
            ["dataset", "dataset2", "bands_as_vars", "numpy", "list", "none", "string"]
        )
        ops = st.one_of(ops, st.tuples(ops, wrapping).map(lambda t: [*t[0], ("wrap", t[1])]))
    # Half the inputs untouched, so that examples with a mutated other input or option
    # reach the deep code.
    return _mostly(st.just([]), ops, share=2)


def _mostly(usual: st.SearchStrategy[Any], rare: st.SearchStrategy[Any], share: int = 4):
    """``usual`` in (share - 1) / share of the examples, ``rare`` in the others (shrinking
    towards ``usual``)."""

    @st.composite
    def draw_one(draw: st.DrawFn) -> Any:
        return draw(rare if draw(st.integers(0, share - 1)) == share - 1 else usual)

    return draw_one()


def _valid_or(valid: list[Any], invalid: list[Any]) -> st.SearchStrategy[Any]:
    """Mostly valid values (to reach deep code), sometimes beyond the limits."""
    return _mostly(st.sampled_from(valid), st.sampled_from(invalid))


# Option values at and beyond their limits. Valid values stay tiny: examples must be fast.
_SCALES = _valid_or(
    [None, 1.0, 1e-4, (None, None), (1.0, None), (None, 1.0)],
    [0, -1.0, _NAN, _INF, (1, 2, 3), (), "1e-4", [1e-4, 1e-4], True, (None, "x")],
)
_OFFSETS = _valid_or(
    [None, 0.0, -0.01, (0.0, None), (None, 0.0)],
    [_NAN, _INF, (1, 2, 3), "x", [0.0, 0.0], (None, _NAN), 1e6],
)
_BANDS = _valid_or(
    [None, {"B0": "B2", "B1": "B3"}, ["B2", "B3", "B4", "B8"], {"B2": "B4"}],
    [{"B0": "B9"}, {}, [], "B2", {"B0": "B2", "B1": "B2"}, 3, ["B2"], {1: 2}, ["B2"] * 4],
)
_SEEDS = _valid_or([0, 1, 2**31], [-1, 2**64, 1.5, None, "1", _NAN])
_MASKS = st.sampled_from(
    [
        None,
        "pair",
        "numpy",
        "float01",
        "with_nan",
        "other_grid",
        "with_band",
        "dataset",
        "transposed",
        "all_true",
        "int",
        "string",
        "no_coords",
        "time2",
        "dask",
    ]
)


def _mask(kind: str | None, pair) -> Any:
    m = pair.mask
    if kind is None:
        return None
    return {
        "pair": lambda: m,
        "numpy": lambda: m.values,
        "float01": lambda: m.astype("float32"),
        "with_nan": lambda: m.astype("float32").where(m.x > m.x[3]),
        "other_grid": lambda: m.isel(y=slice(1, None)),
        "with_band": lambda: m.expand_dims(band=[1]),
        "dataset": lambda: m.to_dataset(name="mask"),
        "transposed": lambda: m.transpose("x", "y"),
        "all_true": lambda: m | True,
        "int": lambda: m.astype("uint8"),
        "string": lambda: "mask.tif",
        "no_coords": lambda: m.drop_vars(["x", "y"]),
        "time2": lambda: m.expand_dims(time=2),
        "dask": lambda: m.chunk(5),
    }[kind]()


# --------------------------------------------------------------------------- cases
@dataclass
class Case:
    """One call of an entry point, described so that its repr rebuilds it by hand."""

    entry: str
    size: int = 60
    seed: int = 0
    src: list[Op] = field(default_factory=list)
    ref: list[Op] = field(default_factory=list)
    mask: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class FuzzFailure(AssertionError):
    """An example broke the property: a raw exception or an unhelpful message."""


def _pair_cases(
    entry: str, kwargs: st.SearchStrategy[dict[str, Any]], *, ref: bool = True, **extra: Any
):
    """Cases of a call on a (mutated) simulated pair: with the reference and a mask, or
    (``ref=False``) on the source alone."""
    return st.builds(
        Case,
        entry=st.just(entry),
        size=st.sampled_from(SIZES),
        seed=st.sampled_from(SEEDS),
        src=_raster_ops(),
        ref=_raster_ops() if ref else st.just([]),
        mask=_mostly(st.sampled_from([None, "pair"]), _MASKS, share=3) if ref else st.none(),
        kwargs=kwargs,
        extra=st.fixed_dictionaries(extra) if extra else st.just({}),
    )


_NEURAL = ("calibnet", "convcalibnet", "bcnet")


@st.composite
def _options(
    draw: st.DrawFn, table: dict[str, Any], *, most: int, base: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A few options of ``table`` (name -> strategy of its values) over ``base``."""
    chosen = draw(st.sets(st.sampled_from(sorted(table)), max_size=most))
    return {**(base or {}), **{k: draw(table[k]) for k in sorted(chosen)}}


_FIT_OPTIONS = {
    "method": _valid_or(
        ["linear", "linear", "calibnet", "convcalibnet", "bcnet"],
        ["LINEAR", "", "nope", None, 3, ["linear"]],
    ),
    "variance": _valid_or([False, True], ["yes", None, 1.5]),
    "bands": _BANDS,
    "scale": _SCALES,
    "offset": _OFFSETS,
    "iterations": _valid_or([1, 2, 3], [0, -1, 2.5, "2", True, _NAN]),
    "batch_size": _valid_or([None, 1, 2, 3], [0, -1, 1.5, "2", True]),
    "patch_size": _valid_or([1, 2, 3, 4], [0, -1, 2.5, "4", True, None, 10**6, 32]),
    "test_fraction": _valid_or([0.0, 0.1, 0.5, 0.99], [1.0, -0.1, 1.5, _NAN, _INF, "0.1", None]),
    "max_patches": _valid_or([None, 1, 2, 5], [0, -1, 2.5, "3", True]),
    "seed": _SEEDS,
    "device": _valid_or(["auto", "cpu"], ["cuda", "cuda:7", "mps", "tpu", "", None, 0, "CPU"]),
    "progress": st.just(False),
    "coregister": _valid_or([False, True], ["yes", None, 1.5]),
}


def _tiny_budget(kwargs: dict[str, Any]) -> dict[str, Any]:
    if kwargs.get("method") in _NEURAL:
        # Neural methods on a tiny budget only: examples must take milliseconds.
        if kwargs.get("iterations") is None:
            kwargs["iterations"] = 1
        kwargs.setdefault("batch_size", 1)  # not the CPU budget's 4096 pixels a step
    return kwargs


def _fit_kwargs() -> st.SearchStrategy[dict[str, Any]]:
    base = {"method": "linear", "patch_size": 2, "progress": False}
    return _options(_FIT_OPTIONS, most=4, base=base).map(_tiny_budget)


_SHIFT_OPTIONS = {
    "bands": _BANDS,
    "scale": _SCALES,
    "offset": _OFFSETS,
    "window": _valid_or([None, 2, 4, 6], [0, -1, 2.5, "8", 10**6, True]),
    "max_windows": _valid_or([1, 4, 8], [0, -1, 2.5, "4", None]),
    "max_shift": _valid_or([4.0, 0.5, 1, 2], [0, -1.0, _NAN, _INF, 1000.0, "4", None]),
    "min_windows": _valid_or([3, 1, 2], [0, -1, 2.5, 10**6, None]),
    "seed": _SEEDS,
}


def _shift_kwargs() -> st.SearchStrategy[dict[str, Any]]:
    # Few small windows: phase correlation costs milliseconds per window.
    base = {"window": 4, "max_windows": 3, "max_shift": 1.0, "min_windows": 1}
    return _options(_SHIFT_OPTIONS, most=4, base=base)


_PREDICT_OPTIONS = {
    "with_variance": _valid_or([True, False, None], ["no", 2]),
    "with_applicability": _valid_or([False, True], ["yes", None, 1.5]),
    "scale": _valid_or([None, 1e-4, 1.0], [0, -1.0, _NAN, "x", (1e-4, 1e-4)]),
    "offset": _valid_or([None, 0.0], [_NAN, "x", (0.0,)]),
}
_MODELS = st.sampled_from(
    ["linear", "linear", "uint16", "calibnet", "convcalibnet", "bcnet", "path", "none", "dict"]
)


def _predict_cases(entry: str):
    model = {"model": _MODELS, "src_dtype": st.sampled_from(["float32", "uint16"])}
    return _pair_cases(entry, _options(_PREDICT_OPTIONS, most=2), ref=False, **model)


_EVALUATE_OPTIONS = {
    "bands": _BANDS,
    "scale": _SCALES,
    "offset": _OFFSETS,
    "split": _valid_or(["all", "test"], ["train", "", None, 3, "TEST"]),
    "patch_size": _FIT_OPTIONS["patch_size"],
    "test_fraction": _FIT_OPTIONS["test_fraction"],
    "max_patches": _FIT_OPTIONS["max_patches"],
    "seed": _SEEDS,
    "coregister": _valid_or([None, False, True], ["yes", 1.5]),
}


def _evaluate_cases(entry: str):
    # A fitted model (or what users pass instead) scored on a mutated pair.
    kwargs = _options(_EVALUATE_OPTIONS, most=3, base={"patch_size": 2})
    return _pair_cases(entry, kwargs, model=_MODELS)


_ZARR_OPTIONS = {
    "mode": _valid_or(["w-", "w"], ["a", "r", "x", None, 3, "W"]),
    "resume": _valid_or([False, True], ["yes", None, 2]),
    # Not 1 or 2: thousands of one-pixel inner chunks take seconds to write.
    "inner_chunks": _valid_or([256, 8, 13], [0, -1, 2.5, "8", None, True]),
    "compressor": _valid_or(["zstd", "lz4"], ["blosc", "", None, 3, "LZ4"]),
    "compression_level": _valid_or([3, 0, 1, 22, None], [-200, 23, 100, 2.5, "3"]),
    "compute": _valid_or([True, False], ["no", None]),
    "progress": st.just(False),
    "storage_options": _valid_or([None, {}], ["x", 3, {"nope": 1}]),
}


_DATASET_OPS = st.lists(
    st.sampled_from(
        [
            ("as_dataarray",),
            ("numpy",),
            ("none",),
            ("no_spatial_dims",),
            ("int_name",),
            ("int_var",),
            ("bool_var",),
            ("complex_var",),
            ("float64_var",),
            ("scalar_var",),
            ("ragged",),
            ("band_chunks",),
            ("one_chunk",),
            ("empty",),
            ("no_crs",),
            ("descending_x",),
            ("time",),
            ("attrs_obj",),
            ("nan_coords",),
        ]
    ),
    max_size=3,
    unique=True,
)


def _zarr_cases():
    return st.builds(
        Case,
        entry=st.just("to_zarr"),
        size=st.just(SIZES[0]),
        src=_DATASET_OPS,
        kwargs=_options(_ZARR_OPTIONS, most=3),
        extra=st.fixed_dictionaries(
            {
                "store": st.sampled_from(
                    ["memory", "memory", "local", "pathlike", "none", "int", "empty", "file"]
                ),
                "twice": _mostly(st.just(False), st.just(True)),
                "lazy": st.booleans(),
            }
        ),
    )


def _mutate_dataset(ds: Any, op: Op) -> Any:
    name = op[0]
    if not isinstance(ds, xr.Dataset) or "prediction" not in ds or "time" in ds.dims:
        return ds
    pred = ds["prediction"]
    return {
        "as_dataarray": lambda: pred,
        "numpy": lambda: pred.values,
        "none": lambda: None,
        "no_spatial_dims": lambda: xr.Dataset({"v": (("a", "b"), np.zeros((2, 3), "f4"))}),
        "int_name": lambda: ds.rename_vars({"prediction": 1}),
        "int_var": lambda: ds.assign(prediction=(pred.real * 100).fillna(0).astype("int16")),
        "bool_var": lambda: ds.assign(prediction=pred > 0.1),
        "complex_var": lambda: ds.assign(prediction=pred.astype("complex64")),
        "float64_var": lambda: ds.assign(prediction=pred.real.astype("float64")),
        "scalar_var": lambda: ds.assign(total=pred.sum()),
        "ragged": lambda: ds.chunk(
            {"y": (3, ds.sizes["y"] - 3) if ds.sizes["y"] > 3 else -1, "x": 17}
        ),
        "band_chunks": lambda: ds.chunk({"band": 1}),
        "one_chunk": lambda: ds.chunk(),
        "empty": lambda: ds.isel(y=slice(0, 0)),
        "no_crs": lambda: ds.drop_vars("spatial_ref", errors="ignore"),
        "descending_x": lambda: ds.isel(x=slice(None, None, -1)),
        "time": lambda: ds.expand_dims(time=2),
        "attrs_obj": lambda: ds.assign_attrs(obj=object(), nested={"a": {1: 2}}),
        "nan_coords": lambda: ds.assign_coords(x=ds.x.where(ds.x > ds.x[2])),
    }[name]()


# Model files: a valid one, and what users and disks do to files.
_FILE_KINDS = (
    "valid",
    "valid_calibnet",
    "missing",
    "directory",
    "empty",
    "text",
    "pickle",
    "truncated",
    "no_metadata",
    "foreign_metadata",
    "bad_json",
    "drop_key",
    "wrong_type",
    "bad_net_config",
    "bad_weights",
    "none",
    "int",
    "bytes_path",
)
_META_KEYS = (
    "method",
    "src_bands",
    "ref_bands",
    "factor",
    "sigmas",
    "src_scale",
    "src_offset",
    "metrics",
    "grid",
    "patches",
    "variance",
    "net_config",
    "linear",
)


def _load_cases():
    return st.builds(
        Case,
        entry=st.just("load"),
        extra=st.fixed_dictionaries(
            {
                "file": st.sampled_from(_FILE_KINDS),
                "key": st.sampled_from(_META_KEYS),
                "value": st.sampled_from([None, "x", 3, -1, [], {}, [1, 2], 1.5, True]),
                "cut": st.integers(0, 400),
            }
        ),
    )


def _save_cases():
    return st.builds(
        Case,
        entry=st.just("save"),
        extra=st.fixed_dictionaries(
            {
                "model": st.sampled_from(["linear", "calibnet", "bcnet"]),
                "path": st.sampled_from(
                    [
                        "ok",
                        "ok_str",
                        "no_suffix",
                        "missing_dir",
                        "is_dir",
                        "none",
                        "int",
                        "empty",
                        "over_file_dir",
                        "url",
                        "trailing_slash",
                    ]
                ),
                # File names as users type them: any text (dots, slashes, spaces, NUL...).
                "name": _mostly(st.just("model.safetensors"), st.text(max_size=12), share=2),
            }
        ),
    )


_MASK_OPTIONS = {
    "classes": _valid_or(
        [(8, 9), [3, 8, 9, 10], (0,), range(3, 6), np.array([8, 9])],
        [[], (12,), (-1,), 8.0, "8", (8.0,), (True,), None, 300],
    ),
    "bits": _valid_or([(0,), (1, 7), [2]], [[], (8,), (-1,), "1", (1.5,), None, 64]),
    "like": _valid_or(
        [None, "ref", "ref_dask"], ["coarse", "numpy", "no_crs", "string", "ref_4326"]
    ),
    "resolution": _valid_or([10.0, 20, 5.0], [7.0, 0, -10.0, _NAN, _INF, "10", None, 40.0]),
    "dilate": _valid_or([0, 1, 2], [-1, 1.5, True, "1", None]),
}


def _mask_cases(which: str):
    other = "bits" if which == "scl" else "classes"
    return st.builds(
        Case,
        entry=st.just(f"cloud_mask_from_{which}"),
        seed=st.sampled_from(SEEDS),
        src=_raster_ops(),
        kwargs=_options({k: v for k, v in _MASK_OPTIONS.items() if k != other}, most=3),
        extra=st.fixed_dictionaries({"squeeze": st.booleans()}),
    )


def _accessor_cases():
    return st.one_of(
        _pair_cases("accessor.fit", _fit_kwargs()),
        _pair_cases("accessor.estimate_shift", _shift_kwargs()),
        _predict_cases("accessor.predict"),
        _evaluate_cases("accessor.evaluate"),
    ).map(_xarray_source)


def _xarray_source(case: Case) -> Case:
    # The accessor exists on xarray objects only: keep the source one.
    case.src = [op for op in case.src if op[0] != "wrap" or op[1].startswith("data")]
    return case


# --------------------------------------------------------------------------- CLI
_CLI_FILES = (
    "src.tif",
    "ref.tif",
    "dn.tif",
    "mask.tif",
    "model.safetensors",
    "store.zarr",
    "missing.tif",
    "notes.txt",
    "empty.tif",
    "folder",
    "memory://nowhere.zarr",
)


@functools.cache
def _cli_files() -> Path:
    """Tiny GeoTIFFs, a model and a store for the command line."""
    root = _workdir() / "cli"
    root.mkdir(exist_ok=True)
    pair = _pair(40, 0)
    pair.src.rio.to_raster(root / "src.tif")
    pair.ref.rio.to_raster(root / "ref.tif")
    _pair(40, 0, "uint16").src.drop_attrs().rio.write_crs(pair.src.rio.crs).rio.to_raster(
        root / "dn.tif"
    )
    pair.mask.astype("uint8").rio.to_raster(root / "mask.tif")
    # A reference series as files: two dated by their names, one dated by nothing.
    for name in _SERIES_FILES:
        pair.ref.rio.to_raster(root / name)
    _model("linear").save(root / "model.safetensors")
    with dask.config.set(scheduler="synchronous"):
        xharmonise.to_zarr(xharmonise.predict(pair.src, _model("linear")), str(root / "store.zarr"))
    (root / "notes.txt").write_text("not a raster\n")
    (root / "empty.tif").write_bytes(b"")
    (root / "folder").mkdir(exist_ok=True)
    return root


_SERIES_FILES = ("s2_20240601.tif", "s2_2024-06-11.tif", "s2_undated.tif")
_DATES_FLAGS = {
    "--ref-dates": _valid_or(
        ["2024-06-01,2024-06-11", "2024-06-01"], ["x", "2024-13-01,2024-06-11", ",", ""]
    ),
    "--src-time": _valid_or(["2024-06-05", "2024-06-11T10:30:00"], ["x", "", "2024-02-30"]),
    "--dates": _valid_or(["auto", "nearest", "all", "2024-06-11"], ["latest", "", "x,y"]),
    "--max-days": _valid_or(["5", "30", "0.5"], ["-1", "x", "nan", "inf"]),
}
_COUNTS = _valid_or(["1", "2", "5"], ["0", "-1", "2.5", "x", "", "1e3", "99999999999999999999"])
_FILES = st.sampled_from(_CLI_FILES)
_CLI_FLAGS = {
    "fit": {
        "--method": _valid_or(["linear", "linear", "calibnet", "bcnet"], ["nope", "", "LINEAR"]),
        "--patch-size": _valid_or(["2", "1", "3"], ["0", "-1", "x", "2.5", "1000"]),
        "--iterations": _valid_or(["1", "2"], ["0", "x", "-3"]),
        "--max-patches": _COUNTS,
        "--seed": _valid_or(["0", "1", "123"], ["-1", "x", "2.5", "99999999999999999999999"]),
        "--device": _valid_or(["cpu", "auto"], ["cuda", "tpu", "", "cuda:9"]),
        "--scale": _valid_or(["1", ",1", "1,"], ["x", "1,2,3", "", ",", "nan", "0", "-1"]),
        "--offset": _valid_or(["0", ",0", "0,"], ["x", "inf", ",", "1,2,3"]),
        "--bands": _valid_or(["B0=B2", "B2,B3,B4,B8", "B1=B3,B0=B2"], ["=", ",", "a=b,c", "B0=B9"]),
        "--chunks": _valid_or(["16", "64", "7"], ["0", "x", "-1"]),
        "--mask": _valid_or(["mask.tif"], list(_CLI_FILES)),
        "--out": _valid_or(["out.safetensors"], ["missing/m.safetensors", "folder", ""]),
        "--variance": st.none(),
        "--coregister": st.none(),
        "--test-fraction": _valid_or(["0.1", "0.5"], ["0", "1", "-0.1", "x", "nan"]),
        **_DATES_FLAGS,
    },
    "predict": {
        "--model": _valid_or(["model.safetensors"], list(_CLI_FILES)),
        "--out": _valid_or(["mem", "out.zarr"], ["store.zarr", "folder", "notes.txt", ""]),
        "--resume": st.none(),
        "--overwrite": st.none(),
        "--no-variance": st.none(),
        "--applicability": st.none(),
        "--compressor": _valid_or(["zstd", "lz4"], ["blosc", "", "LZ4"]),
        "--scale": _valid_or(["1", "0.5"], ["x", "nan", "0", "-1"]),
        "--offset": _valid_or(["0", "-0.01"], ["x", "inf"]),
        "--chunks": _valid_or(["16", "32"], ["0", "x"]),
    },
    "evaluate": {
        "--model": _valid_or(["model.safetensors"], list(_CLI_FILES)),
        "--mask": _valid_or(["mask.tif"], list(_CLI_FILES)),
        "--split": _valid_or(["all", "test"], ["train", "", "TEST"]),
        "--patch-size": _valid_or(["2", "1", "3"], ["0", "-1", "x", "2.5", "1000"]),
        "--max-patches": _COUNTS,
        "--seed": _valid_or(["0", "1"], ["-1", "x", "2.5"]),
        "--scale": _valid_or(["1", ",1", "1,"], ["x", "1,2,3", "", ",", "nan", "0", "-1"]),
        "--offset": _valid_or(["0", ",0"], ["x", "inf", ","]),
        "--bands": _valid_or(["B0=B2", "B2,B3,B4,B8"], ["=", ",", "a=b,c", "B0=B9"]),
        "--coregister": st.none(),
        "--no-coregister": st.none(),
        "--out": _valid_or(["scores.json", "scores.csv"], ["scores.txt", "missing/s.json", ""]),
        "--chunks": _valid_or(["16", "64"], ["0", "x"]),
        "--test-fraction": _valid_or(["0.1", "0.5"], ["0", "1", "x"]),
        **_DATES_FLAGS,
    },
    "info": {},
    "report": {"--src": _FILES, "--scale": st.sampled_from(["x", "1e-4"])},
    "demo": {
        "--size": st.sampled_from(["0", "-1", "x"]),
        "--src": st.sampled_from(["missing.tif", "notes.txt", "src.tif"]),
        "--mask": st.sampled_from(["mask.tif", "missing.tif"]),
        "--patch-size": st.sampled_from(["0", "x"]),
    },
}
_POSITIONAL = {
    "fit": 2,
    "predict": 1,
    "evaluate": 2,
    "info": 1,
    # report: a model file that is refused, so that no report is drawn (slow, not argument
    # handling); demo: a flag that is refused before anything is simulated.
    "report": 1,
    "demo": 0,
}


@st.composite
def _cli_cases(draw: st.DrawFn) -> Case:
    command = draw(
        st.sampled_from(
            ["fit", "fit", "fit", "predict", "predict", "evaluate", "info", "report", "demo"]
        )
    )
    args: list[str] = [command]
    n = _POSITIONAL[command]
    pool = _CLI_FILES
    if command == "report":
        pool = tuple(f for f in _CLI_FILES if f != "model.safetensors")
    usual = {
        "fit": ["src.tif", "ref.tif"],
        "predict": ["src.tif"],
        "evaluate": ["src.tif", "ref.tif"],
        "info": ["store.zarr"],
    }
    if command in ("fit", "evaluate") and draw(st.integers(0, 3)) == 0:
        # A reference time series: several REF files, dated or not, masks per date or not.
        refs = draw(st.lists(st.sampled_from((*_SERIES_FILES, "ref.tif")), min_size=1, max_size=3))
        args += ["src.tif", *refs]
        args += ["--mask=mask.tif"] * draw(st.integers(0, len(refs)))
    elif command in usual and draw(st.integers(0, 3)):
        args += usual[command]
    else:
        args += [draw(st.sampled_from(pool)) for _ in range(n)]
    if draw(st.integers(0, 9)) == 0:
        args = args[:-1] if len(args) > 1 else args  # a missing positional argument
    flags = _CLI_FLAGS[command]
    chosen = draw(st.sets(st.sampled_from(sorted(flags)), max_size=4)) if flags else set()
    if command == "demo" and not chosen & {"--size", "--src", "--patch-size"}:
        chosen.add("--size")
    for flag in sorted(chosen):
        value = draw(flags[flag])
        args += [flag] if value is None else [f"{flag}={value}"]
    # predict's required options, left out now and then (a usage error).
    for flag, value in (("--model", "model.safetensors"), ("--out", "mem")):
        if command == "predict" and flag not in chosen and draw(st.integers(0, 5)):
            args.append(f"{flag}={value}")
    if command == "evaluate" and "--model" not in chosen and draw(st.integers(0, 5)):
        args.append("--model=model.safetensors")
    if command == "evaluate" and "--patch-size" not in chosen:
        args.append("--patch-size=2")
    if command == "fit" and "--iterations" not in chosen:
        args.append("--iterations=1")
    if command == "fit" and "--patch-size" not in chosen:
        args.append("--patch-size=2")
    if command == "fit" and "--method" not in chosen:
        args.append("--method=linear")  # the default, calibnet, trains on 4096 pixels a step
    if command == "fit" and "--out" not in chosen:
        args.append("--out=out.safetensors")  # never the default, in the working directory
    if draw(st.integers(0, 5)):
        args.append("--quiet")
    return Case(entry="cli", extra={"argv": args})


# --------------------------------------------------------------------------- running
@functools.cache
def _valid_model_file() -> Path:
    path = _workdir() / "valid.safetensors"
    _model("linear").save(path)
    return path


def _model_file(kind: str, key: str, value: Any, cut: int) -> Any:
    from safetensors import safe_open
    from safetensors.numpy import save_file

    root = _workdir() / "models"
    root.mkdir(exist_ok=True)
    path = root / f"{uuid.uuid4().hex}.safetensors"
    if kind == "valid_calibnet":
        _model("calibnet").save(path)
        return path
    good = _valid_model_file()
    if kind == "valid":
        return good
    if kind == "missing":
        return path
    if kind == "directory":
        return root
    if kind == "none":
        return None
    if kind == "int":
        return 3
    if kind == "bytes_path":
        return bytes(good)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("hello\n")
    elif kind == "pickle":
        import pickle

        path.write_bytes(pickle.dumps({"linear": np.zeros(3)}))
    elif kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: min(cut, len(data) - 1)])
    else:
        with safe_open(str(good), framework="numpy") as f:
            meta_text = f.metadata()["xharmonise"]
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(meta_text)
        text = meta_text
        # Format 2 nests the fields under "mapping" and "fit_report": damage them there.
        holder = next((meta[p] for p in ("mapping", "fit_report") if key in meta[p]), meta)
        if kind == "no_metadata":
            save_file(tensors, path)
            return path
        if kind == "foreign_metadata":
            text = json.dumps({"format": "other/1"})
        elif kind == "bad_json":
            text = meta_text[: cut % len(meta_text)]
        elif kind == "drop_key":
            if key == "linear":
                tensors.pop("linear")
            holder.pop(key, None)
            text = json.dumps(meta)
        elif kind == "wrong_type":
            if key == "linear":
                tensors["linear"] = np.zeros((2,), np.float64)
            else:
                holder[key] = value
            text = json.dumps(meta)
        elif kind == "bad_net_config":
            meta["mapping"]["net_config"] = {"method": "calibnet", "n_bands": value}
            text = json.dumps(meta)
        elif kind == "bad_weights":
            meta["mapping"]["net_config"] = {"method": "calibnet", "n_bands": 4}
            text = json.dumps(meta)
        save_file(tensors, path, metadata={"xharmonise": text})
    return path


def _zarr_store(kind: str) -> Any:
    name = uuid.uuid4().hex
    return {
        "memory": lambda: f"memory://fuzz/{name}.zarr",
        "local": lambda: str(_workdir() / "stores" / f"{name}.zarr"),
        "pathlike": lambda: _workdir() / "stores" / f"{name}.zarr",
        "none": lambda: None,
        "int": lambda: 3,
        "empty": lambda: "",
        "file": lambda: _valid_model_file(),
    }[kind]()


def _save_path(kind: str, name: str) -> Any:
    root = _workdir() / "saved" / uuid.uuid4().hex
    root.mkdir(parents=True)
    notes = root / "notes.txt"
    notes.write_text("a file\n")
    return {
        "ok": lambda: root / name,
        "ok_str": lambda: str(root / name),
        "no_suffix": lambda: root / Path(name).stem,
        "missing_dir": lambda: root / "missing" / name,
        "is_dir": lambda: root,
        "none": lambda: None,
        "int": lambda: 3,
        "empty": lambda: "",
        "over_file_dir": lambda: notes / name,
        "url": lambda: f"memory://{name}",
        "trailing_slash": lambda: str(root / name) + "/",
    }[kind]()


def _like(kind: str | None, pair) -> Any:
    if kind is None:
        return None
    ref = pair.ref
    return {
        "ref": lambda: ref,
        "ref_dask": lambda: ref.chunk(7),
        "coarse": lambda: ref.coarsen(x=3, y=3, boundary="trim").mean(),
        "numpy": lambda: ref.values,
        "no_crs": lambda: ref.drop_vars("spatial_ref"),
        "string": lambda: "ref.tif",
        "ref_4326": lambda: ref.rio.reproject("EPSG:4326"),
    }[kind]()


def _snapshot(obj: Any) -> Any:
    """Copies of every variable's dims and values, and the attributes' values themselves
    (attributes may hold objects whose copies compare unequal)."""
    if not isinstance(obj, xr.DataArray | xr.Dataset):
        return None
    if isinstance(obj, xr.Dataset):
        variables = dict(obj.variables)
    else:
        variables = {**obj.coords.variables, "<data>": obj.variable}
    return [(None, (), None, _ids(obj.attrs))] + [
        (k, v.dims, np.array(v.values, copy=True), _ids(v.attrs)) for k, v in variables.items()
    ]


def _ids(attrs: dict[Any, Any]) -> list[tuple[Any, int]]:
    return [(k, id(v)) for k, v in attrs.items()]


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))


def _unchanged(before: Any, after: Any, what: str) -> None:
    if before is None:
        return
    now = _snapshot(after)
    same = len(now) == len(before) and all(
        k == k2 and dims == dims2 and _same(v, v2) and attrs == attrs2
        for (k, dims, v, attrs), (k2, dims2, v2, attrs2) in zip(before, now, strict=True)
    )
    if not same:
        raise FuzzFailure(f"{what} was modified by the call")


def _source_model(kind: str) -> Any:
    if kind == "path":
        return str(_valid_model_file())
    if kind == "none":
        return None
    if kind == "dict":
        return {"method": "linear"}
    return _model(kind)


def _tags(case: Case) -> tuple[str, ...]:
    """Words an error message may use to name what was wrong in ``case``."""
    tags: list[str] = [str(k) for k in case.kwargs]
    aliases = {
        "bands": ("band",),
        "scale": ("scale", "reflectance"),
        "offset": ("offset", "reflectance"),
        "max_patches": ("patch",),
        "patch_size": ("patch",),
        "test_fraction": ("test",),
        "window": ("window",),
        "min_windows": ("window",),
        "max_windows": ("window",),
        "max_shift": ("shift", "window"),
        "iterations": ("iteration",),
        "seed": ("window", "patch"),
        "method": ("method",),
        "like": ("like",),
        "resolution": ("resolution",),
    }
    for k in case.kwargs:
        tags += aliases.get(k, ())
    inputs = {"src": "source", "ref": "reference"}
    if case.entry.startswith("cloud_mask"):
        inputs = {"src": case.entry.rsplit("_", 1)[-1].upper()}
    for attr, word in inputs.items():
        if getattr(case, attr):
            tags += [word, "overlap", "patch", "window", "input", "reflectance", "like"]
    if case.mask:
        tags += ["mask", "patch", "window"]
    if case.entry in ("predict", "accessor.predict", "evaluate", "accessor.evaluate"):
        tags += ["model", "image", "source", "scale"]
    if case.entry == "to_zarr":
        tags += ["store", "dataset", "ds", "variable", "exists", "mode", "resume"]
    if case.entry in ("load", "save"):
        tags += ["model", "path", "file", "folder"]
    # A pair may be too small for the call whatever was mutated.
    if case.entry.endswith("estimate_shift") or case.kwargs.get("coregister") is True:
        tags += ["window", "overlap", "shift"]
    return tuple(tags)


def _build(case: Case) -> tuple[Callable[[], Any], list[tuple[Any, Any, str]]]:
    """Build the inputs of ``case``; returns the call of its entry point and the
    (snapshot, input, name) triples to check for modification."""
    entry = case.entry
    watched: list[tuple[Any, Any, str]] = []

    def watch(obj: Any, name: str) -> Any:
        watched.append((_snapshot(obj), obj, name))
        return obj

    if entry in ("fit", "estimate_shift", "accessor.fit", "accessor.estimate_shift"):
        pair = _pair(case.size, case.seed)
        src = watch(mutate(pair.src, case.src), "the source")
        ref = watch(mutate(pair.ref, case.ref), "the reference")
        kwargs = dict(case.kwargs)
        if case.mask is not None:
            kwargs["mask"] = watch(_mask(case.mask, pair), "the mask")
        if entry.startswith("accessor."):
            method = getattr(src.harmonise, entry.split(".")[1])
            return lambda: method(ref, **kwargs), watched
        func = xharmonise.fit if entry == "fit" else xharmonise.estimate_shift
        return lambda: func(src, ref, **kwargs), watched
    if entry in ("evaluate", "accessor.evaluate"):
        pair = _pair(case.size, case.seed)
        src = watch(mutate(pair.src, case.src), "the source")
        ref = watch(mutate(pair.ref, case.ref), "the reference")
        model = _source_model(case.extra["model"])
        kwargs = dict(case.kwargs)
        if case.mask is not None:
            kwargs["mask"] = watch(_mask(case.mask, pair), "the mask")
        if entry == "evaluate":
            return lambda: xharmonise.evaluate(src, ref, model, **kwargs), watched
        return lambda: src.harmonise.evaluate(ref, model, **kwargs), watched
    if entry in ("predict", "accessor.predict"):
        pair = _pair(case.size, case.seed, case.extra["src_dtype"])
        src = watch(mutate(pair.src, case.src), "the source")
        model = _source_model(case.extra["model"])
        if entry == "predict":
            return lambda: xharmonise.predict(src, model, **case.kwargs).compute(), watched
        return lambda: src.harmonise.predict(model, **case.kwargs).compute(), watched
    if entry == "to_zarr":
        pair = _pair(case.size, 0)
        src = pair.src.chunk(24) if case.extra["lazy"] else pair.src
        ds: Any = xharmonise.predict(src, _model("linear"))
        for op in case.src:
            ds = _mutate_dataset(ds, op)
        watch(ds, "the dataset")
        store = _zarr_store(case.extra["store"])

        def write() -> Any:
            if case.extra["twice"]:
                # The second call meets an existing store: refused, replaced or resumed.
                with contextlib.suppress(HarmoniseError):
                    xharmonise.to_zarr(ds, store)
            out = xharmonise.to_zarr(ds, store, **case.kwargs)
            return out.compute() if isinstance(out, Delayed) else out

        return write, watched
    if entry == "load":
        e = case.extra
        path = _model_file(e["file"], e["key"], e["value"], e["cut"])
        return lambda: xharmonise.load(path), watched
    if entry == "save":
        model = _model(case.extra["model"])
        target = _save_path(case.extra["path"], case.extra["name"])
        return lambda: model.save(target), watched
    if entry.startswith("cloud_mask_from_"):
        layer = _scl(case.seed)
        if case.extra["squeeze"]:
            layer = layer.isel(band=0, drop=True)
        layer = watch(mutate(layer, case.src), "the layer")
        kwargs = dict(case.kwargs)
        if "like" in kwargs:
            kwargs["like"] = watch(_like(kwargs["like"], _pair(60, 0)), "like")
        func = getattr(xharmonise, entry)
        return lambda: func(layer, **kwargs).compute(), watched
    if entry == "cli":
        argv = case.extra["argv"]
        return lambda: _run_cli(argv), watched
    raise ValueError(f"unknown entry point {entry!r}")


def _cli_arg(arg: str, root: Path) -> str:
    if "=" in arg and arg.startswith("--"):
        flag, value = arg.split("=", 1)
        return f"{flag}={_cli_arg(value, root)}" if value else arg
    if arg == "mem":
        return f"memory://fuzz/{uuid.uuid4().hex}.zarr"
    if arg.startswith("-") or "://" in arg or not arg:
        return arg
    if arg in ("out.safetensors", "out.zarr", "scores.json", "scores.csv"):
        return str(root / "out" / f"{uuid.uuid4().hex}-{arg}")
    if "." in arg or arg in ("folder",) or "/" in arg:
        return str(root / arg)
    return arg


def _run_cli(argv: list[str]) -> tuple[int, str]:
    from xharmonise.cli import main

    root = _cli_files()
    (root / "out").mkdir(exist_ok=True)
    args = [_cli_arg(a, root) for a in argv]
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(args)
    stderr = err.getvalue()
    if code not in (0, 1, 2):
        raise FuzzFailure(f"exit code {code} for {args}: {stderr}")
    if "Traceback" in stderr:
        raise FuzzFailure(f"a traceback on stderr for {args}: {stderr}")
    errors = [line for line in stderr.splitlines() if line.startswith("xharmonise: error:")]
    if code:
        if len(errors) != 1:
            raise FuzzFailure(f"exit {code} for {args} without one error line: {stderr!r}")
        if "unexpected" in errors[0] or len(errors[0]) < len("xharmonise: error: ") + 10:
            raise FuzzFailure(f"an unexpected error for {args}: {errors[0]}")
    elif errors:
        raise FuzzFailure(f"exit 0 with an error line for {args}: {stderr!r}")
    return code, stderr


def check(case: Case) -> str:
    """The property: success, or a named :class:`HarmoniseError` whose message names the
    problem and the fix; inputs never modified. Raises :class:`FuzzFailure` otherwise.

    Returns the outcome: ``"ok"`` or the name of the error class that refused the input.
    """
    outcome = "ok"
    try:
        with warnings.catch_warnings():
            # Building the inputs is the user's business, not the library's.
            warnings.simplefilter("ignore")
            call, watched = _build(case)
        with warnings.catch_warnings():
            # Warnings are errors, as under pytest (pyproject.toml's filterwarnings, whose
            # third-party exceptions are repeated here), except the documented warnings.
            warnings.simplefilter("error")
            for message, category in _IGNORED_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            warnings.simplefilter("ignore", DetailLossWarning)
            warnings.simplefilter("ignore", UnknownBandWarning)
            warnings.simplefilter("ignore", CalibrationWarning)  # tiny pairs: documented
            # Documented too: a model fitted on a 60-pixel pair knows little of a scene.
            warnings.simplefilter("ignore", OutOfDomainWarning)
            try:
                result = call()
                if case.entry == "cli":
                    outcome = f"exit {result[0]}"
            except HarmoniseError as err:
                _check_message(err, case)
                outcome = type(err).__name__
            except Exception as err:
                raise FuzzFailure(f"raw {type(err).__name__}: {err}") from err
    finally:
        _cleanup()
    with warnings.catch_warnings():
        # Re-reading a lazily mutated input (e.g. a cast to float16) is not the call's doing.
        warnings.simplefilter("ignore")
        for before, after, name in watched:
            _unchanged(before, after, name)
    return outcome


_IGNORED_WARNINGS = (
    (r"The 'shapely.ops.transform\(\)' function is deprecated", DeprecationWarning),
    (r"Use `@` matmul instead of `\*` mul operator", PendingDeprecationWarning),
)


def _check_message(err: HarmoniseError, case: Case) -> None:
    message = str(err)
    name = type(err).__name__
    if not message.strip():
        raise FuzzFailure(f"{name} with an empty message") from err
    if ":" not in message:
        raise FuzzFailure(f"{name} message without a fix ('problem: fix'): {message}") from err
    tags = _tags(case)
    if not any(t.lower() in message.lower() for t in tags):
        raise FuzzFailure(f"{name} message names none of {tags}: {message}") from err


def _cleanup() -> None:
    fs = fsspec.filesystem("memory")
    with contextlib.suppress(FileNotFoundError):
        fs.rm("/fuzz", recursive=True)


# --------------------------------------------------------------------------- registry
def strategies() -> dict[str, st.SearchStrategy[Case]]:
    """The case strategy of every entry point, by name."""
    return {
        "fit": _pair_cases("fit", _fit_kwargs()),
        "predict": _predict_cases("predict"),
        "evaluate": _evaluate_cases("evaluate"),
        "estimate_shift": _pair_cases("estimate_shift", _shift_kwargs()).map(_bigger),
        "to_zarr": _zarr_cases(),
        "load": _load_cases(),
        "save": _save_cases(),
        "cloud_mask_from_scl": _mask_cases("scl"),
        "cloud_mask_from_clm": _mask_cases("clm"),
        "accessor": _accessor_cases(),
        "cli": _cli_cases(),
    }


def _bigger(case: Case) -> Case:
    # Phase correlation needs windows with a margin: the largest pair only.
    case.size = 100
    return case


ENTRY_POINTS: tuple[str, ...] = tuple(strategies())
