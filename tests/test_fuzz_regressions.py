"""One plain test per bug the fuzzer found (tests/test_fuzz.py): the minimal input that
ended in a raw exception (or a silent wrong result), and the named error it gets now."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import xarray as xr
from safetensors import safe_open
from safetensors.numpy import save_file

import xharmonise
from xharmonise.errors import (
    BandMismatchError,
    DimensionError,
    GridError,
    InputTypeError,
    InputValueError,
    ModelFileError,
    NoOverlapError,
    StoreExistsError,
)
from xharmonise.simulate import simulate_pair


@pytest.fixture(scope="module")
def pair():
    return simulate_pair((60, 60), seed=0)


@pytest.fixture(scope="module")
def model(pair):
    return xharmonise.fit(pair.src, pair.ref, method="linear", patch_size=2)


def _fit(src, ref, **kw):
    kw.setdefault("method", "linear")
    kw.setdefault("patch_size", 2)
    return xharmonise.fit(src, ref, **kw)


# --------------------------------------------------------------------------- images
def test_time_series_reference_is_refused_with_the_date_to_select(pair):
    # Was: ValueError: too many values to unpack (sampling.py).
    two_dates = xr.concat([pair.ref, pair.ref], dim="time")
    with pytest.raises(DimensionError, match=r"time dimension with 2 dates.*ref\.isel\(time=0\)"):
        _fit(pair.src, two_dates)


def test_single_date_and_singleton_dims_are_dropped(pair):
    # Was: ValueError: too many values to unpack; a length-1 dim holds one image.
    model = _fit(pair.src.expand_dims(z=1), pair.ref.expand_dims(time=1))
    assert model.n_bands == 4


def test_band_last_order_is_refused_with_the_transpose(pair):
    # Was: ValueError: y and x sizes ... must be multiples of the factor (psf.py).
    with pytest.raises(
        DimensionError, match=r"\('y', 'x', 'band'\).*transpose\('band', 'y', 'x'\)"
    ):
        _fit(pair.src, pair.ref.transpose("y", "x", "band"))


def test_empty_source_is_refused(pair):
    # Was: rioxarray's NoDataInBounds.
    with pytest.raises(InputValueError, match=r"the source is empty.*0 along 'x'"):
        _fit(pair.src.isel(x=slice(0, 0)), pair.ref)


@pytest.mark.parametrize("src", [None, "src.tif", [[0.1]]], ids=["none", "path", "list"])
def test_non_xarray_source_is_refused(pair, src):
    # Was: AttributeError: ... has no attribute 'dims'.
    with pytest.raises(InputTypeError, match=r"the source is a .*xarray\.DataArray"):
        _fit(src, pair.ref)


def test_numpy_source_is_refused(pair):
    with pytest.raises(InputTypeError, match=r"the source is a numpy\.ndarray"):
        _fit(pair.src.values, pair.ref)


def test_complex_source_is_refused(pair):
    # Was: ComplexWarning (an error under -W error): the imaginary part silently dropped.
    with pytest.raises(InputTypeError, match=r"complex64 values.*\.real"):
        _fit(pair.src.astype("complex64"), pair.ref)


def test_non_numeric_scale_factor_attribute_is_refused(pair):
    # Was: ValueError: could not convert string to float.
    with pytest.raises(InputValueError, match=r"add_offset attribute is \('a', 'b'\)"):
        _fit(pair.src.assign_attrs(add_offset=("a", "b")), pair.ref)
    with pytest.raises(InputValueError, match=r"_FillValue attribute is 'x'"):
        _fit(pair.src, pair.ref.assign_attrs(_FillValue="x"))


def test_nan_coordinates_are_refused(pair):
    # Was: RuntimeWarning from np.allclose (an error under -W error).
    x = pair.src.x.values.copy()
    x[1] = np.nan
    with pytest.raises(GridError, match=r"the source has x coordinates that are not finite"):
        _fit(pair.src.assign_coords(x=x), pair.ref)


def test_crs_that_does_not_fit_the_coordinates_is_refused(pair):
    # Was: ValueError: cannot convert float NaN to integer (metres labelled as degrees).
    with pytest.raises(GridError, match=r"geographic CRS \(EPSG:4326\) but coordinates.*write_crs"):
        _fit(pair.src.rio.write_crs("EPSG:4326"), pair.ref)


def _scl_in_metres(crs: str) -> xr.DataArray:
    """A 6 x 8 SCL layer whose coordinates are UTM-like metres, labelled with ``crs``."""
    return xr.DataArray(
        np.arange(48, dtype=np.uint8).reshape(1, 6, 8) % 12,
        dims=("band", "y", "x"),
        coords={
            "y": 4800000.0 - 20.0 * (np.arange(6) + 0.5),
            "x": 500000.0 + 20.0 * (np.arange(8) + 0.5),
        },
        attrs={"_FillValue": 0},
    ).rio.write_crs(crs)


def test_mask_layer_with_a_crs_that_does_not_fit_its_coordinates_is_refused(pair):
    # Was: shapely's ValueError: Points of LinearRing do not form a closed linestring.
    scl = _scl_in_metres("EPSG:4326")  # metres labelled as degrees
    with pytest.raises(GridError, match=r"the SCL has a geographic CRS.*not degrees"):
        xharmonise.cloud_mask_from_scl(scl.chunk(), like=pair.ref)


def test_huge_fill_values_are_refused_by_fit_and_skipped_by_estimate_shift():
    # Was: fit silently trained on 1e30; estimate_shift: RuntimeWarning: overflow.
    pair = simulate_pair((100, 100), seed=0)
    ref = pair.ref.copy(deep=True)
    ref[0, 10, 10] = 1e30
    with pytest.raises(InputValueError, match=r"the reference holds 1 values beyond.*nodata"):
        _fit(pair.src, ref)
    est = xharmonise.estimate_shift(
        pair.src, ref, window=4, max_windows=3, max_shift=1.0, min_windows=1
    )
    assert np.isfinite(est.east)


# --------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("patch_size", 0, InputValueError),  # was ZeroDivisionError
        ("iterations", 0, InputValueError),  # was ValueError: invalid training configuration
        ("seed", -1, InputValueError),  # was ValueError from NumPy
        ("test_fraction", 1.5, InputValueError),  # was silently no training patch
        ("scale", "x", InputTypeError),  # was ValueError: could not convert string to float
        ("scale", (1, 2, 3), InputValueError),  # was ValueError: too many values to unpack
        ("offset", float("nan"), InputValueError),  # was NaN reflectances
        ("variance", "yes", InputTypeError),
        ("device", "tpu", InputValueError),  # was RuntimeError from torch
    ],
)
def test_option_beyond_its_limits_is_refused_by_name(pair, option, value, error):
    method = "calibnet" if option in ("iterations", "device") else "linear"
    with pytest.raises(error, match=re.escape(f"{option}={value!r}")):
        _fit(pair.src, pair.ref, method=method, **{option: value})


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_refused_before_reading_data(pair):
    # Was: RuntimeError from torch, after sampling.
    with pytest.raises(InputValueError, match=r"device='cuda' but CUDA is not available.*cpu"):
        _fit(pair.src, pair.ref, device="cuda")


def test_bands_of_the_wrong_type_are_refused(pair):
    # Was: TypeError: object of type 'int' has no len().
    with pytest.raises(InputTypeError, match=r"bands=3 is a int"):
        _fit(pair.src, pair.ref, bands=3)


def test_one_reference_band_paired_twice_is_refused(pair):
    with pytest.raises(BandMismatchError, match=r"reference band\(s\) \['B2'\] with several"):
        _fit(pair.src, pair.ref, bands={"B0": "B2", "B1": "B2"})


def test_too_few_training_pixels_for_the_linear_fit_is_refused(pair):
    # Was: ValueError: only 4 valid pixels to fit 5 terms.
    with pytest.raises(InputValueError, match=r"4 clear pixels.*5 terms.*max_patches"):
        _fit(pair.src, pair.ref, max_patches=1)


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("window", 0, InputValueError),  # was ValueError: range() arg 3 must not be zero
        ("max_shift", None, InputTypeError),  # was TypeError: NoneType * int
        ("min_windows", 0, InputValueError),
    ],
)
def test_estimate_shift_options_are_checked(pair, option, value, error):
    with pytest.raises(error, match=rf"{option}={value!r}"):
        xharmonise.estimate_shift(pair.src, pair.ref, **{option: value})


def test_estimate_shift_on_tiny_windows_does_not_warn():
    # Was: skimage's UserWarning about an RMS error that is never used.
    pair = simulate_pair((120, 120), seed=0)
    est = xharmonise.estimate_shift(
        pair.src.drop_vars("band"), pair.ref, window=2, max_shift=1.0, min_windows=1
    )
    assert np.isfinite(est.east)


# --------------------------------------------------------------------------- masks
def test_numpy_mask_is_refused(pair):
    # Was: AttributeError: 'numpy.ndarray' object has no attribute 'dims'.
    with pytest.raises(InputTypeError, match=r"the mask is a numpy\.ndarray.*DataArray"):
        _fit(pair.src, pair.ref, mask=pair.mask.values)


def test_dataset_mask_is_refused(pair):
    # Was: AttributeError: 'Dataset' object has no attribute 'data'.
    with pytest.raises(InputTypeError, match=r"the mask is a xarray\.Dataset"):
        _fit(pair.src, pair.ref, mask=pair.mask.to_dataset(name="mask"))


def test_transposed_mask_is_refused():
    # Was: silently applied with rows and columns swapped.
    pair = simulate_pair((60, 60), seed=0, ref_clouds=0.2)
    with pytest.raises(DimensionError, match=r"the mask has dims \('x', 'y'\).*transpose"):
        _fit(pair.src, pair.ref, mask=pair.mask.transpose("x", "y"))


def test_like_that_is_no_raster_is_refused():
    # Was: AttributeError: 'numpy.ndarray' object has no attribute 'dims'.
    scl = xr.DataArray(
        np.array([[4, 9], [3, 11]], np.uint8),
        dims=("y", "x"),
        coords={"y": [5110.0, 5090.0], "x": [10.0, 30.0]},
    ).rio.write_crs("EPSG:32632")
    with pytest.raises(InputTypeError, match=r"like is a numpy\.ndarray"):
        xharmonise.cloud_mask_from_scl(scl, like=np.zeros((4, 4)))


# --------------------------------------------------------------------------- predict
@pytest.mark.parametrize("bad", [None, {"method": "linear"}, "model.safetensors"])
def test_predict_refuses_what_is_not_a_model(pair, bad):
    # Was: AttributeError: ... has no attribute 'n_bands'.
    with pytest.raises(InputTypeError, match=r"model is a .*xharmonise\.load"):
        xharmonise.predict(pair.src, bad)


def test_predict_refuses_a_scale_pair(pair, model):
    # Was: ValueError: operands could not be broadcast together.
    with pytest.raises(InputTypeError, match=r"scale=\(0\.0001, 0\.0001\)"):
        xharmonise.predict(pair.src, model, scale=(1e-4, 1e-4))


def test_predict_maps_infinities_to_nan(pair, model):
    # Was: RuntimeWarning: invalid value encountered in matmul.
    src = pair.src.copy(deep=True)
    src[0, 5, 5], src[1, 5, 5], src[2, 6, 6] = np.inf, np.inf, -np.inf
    out = xharmonise.predict(src, model)["prediction"].values
    assert np.isnan(out[:, 5, 5]).all() and np.isnan(out[:, 6, 6]).all()
    assert np.isfinite(out[:, 10, 10]).all()


def test_a_convolutional_model_predicts_a_source_thinner_than_its_halo(pair):
    # Was: ValueError "The overlapping depth 3 is larger than your array 2" (dask's
    # overlap) for ConvCalibNet on a lazy source two pixels tall.
    model = _fit(pair.src, pair.ref, method="convcalibnet", iterations=1, batch_size=1)
    with pytest.warns(xharmonise.DetailLossWarning):
        whole = xharmonise.predict(pair.src.isel(y=slice(0, 2)), model)["prediction"]
        lazy = xharmonise.predict(pair.src.isel(y=slice(0, 2)).chunk(x=(7, 20, 33)), model)
    np.testing.assert_allclose(lazy["prediction"].values, whole.values, rtol=1e-6)
    assert lazy["prediction"].chunks[2] == (7, 20, 33)


def test_constant_reference_scores_nan_instead_of_dividing_by_zero(pair):
    # Was (CLI: a mask given as both images): RuntimeWarning: divide by zero in R2.
    flat = pair.ref * 0 + 0.2
    model = _fit(pair.src, flat)
    assert np.isnan(model.metrics.sel(metric="r2").values).all()


# --------------------------------------------------------------------------- to_zarr
@pytest.fixture
def ds(pair, model):
    return xharmonise.predict(pair.src, model)


def test_to_zarr_refuses_a_dataarray(ds):
    # Was: AttributeError: 'DataArray' object has no attribute 'data_vars'.
    with pytest.raises(InputTypeError, match=r"ds is a xarray\.DataArray.*to_dataset"):
        xharmonise.to_zarr(ds["prediction"], "memory://regress-da.zarr")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mode": "a"}, InputValueError, r"mode='a'"),  # was a plain ValueError
        ({"compression_level": 23}, InputValueError, r"compression_level=23"),  # zarr's
        ({"inner_chunks": "8"}, InputTypeError, r"inner_chunks='8'"),  # TypeError: '<'
        ({"resume": "yes"}, InputTypeError, r"resume='yes'"),
    ],
)
def test_to_zarr_options_are_checked(ds, kwargs, error, match):
    with pytest.raises(error, match=match):
        xharmonise.to_zarr(ds, "memory://regress-options.zarr", **kwargs)


def test_to_zarr_store_that_is_no_path_or_a_file(ds, tmp_path):
    # Was: TypeError (None), FileExistsError (""), NotADirectoryError (a file).
    with pytest.raises(InputTypeError, match=r"store=None"):
        xharmonise.to_zarr(ds, None)
    with pytest.raises(InputValueError, match=r"store='' is not a path"):
        xharmonise.to_zarr(ds, "")
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreExistsError, match=r"is a file, not a Zarr store"):
        xharmonise.to_zarr(ds, tmp_path / "file", mode="w")


def test_to_zarr_empty_storage_options_on_a_local_path(ds, tmp_path):
    # Was: TypeError: 'storage_options' was provided but unused.
    xharmonise.to_zarr(ds, tmp_path / "out.zarr", storage_options={})
    with pytest.raises(InputValueError, match=r"storage_options= apply to fsspec URLs"):
        xharmonise.to_zarr(ds, tmp_path / "other.zarr", storage_options={"anon": True})


def test_to_zarr_refuses_what_zarr_cannot_name_or_hold(ds):
    # Was: TypeErrors from xarray (names, attributes), KeyError 'y' (empty / no raster).
    with pytest.raises(InputTypeError, match=r"variable named 1"):
        xharmonise.to_zarr(ds.rename_vars({"prediction": 1}), "memory://regress-name.zarr")
    with pytest.raises(InputTypeError, match=r"attribute 'obj'"):
        xharmonise.to_zarr(ds.assign_attrs(obj=object()), "memory://regress-attrs.zarr")
    with pytest.raises(InputValueError, match=r"no pixels along y"):
        xharmonise.to_zarr(ds.isel(y=slice(0, 0)), "memory://regress-empty.zarr")
    table = xr.Dataset({"v": (("a", "b"), np.zeros((2, 3), "f4"))})
    with pytest.raises(InputValueError, match=r"no \(y, x\) variable"):
        xharmonise.to_zarr(table, "memory://regress-table.zarr")


def test_to_zarr_writes_scalar_and_boolean_variables(ds):
    # Was: IndexError from zarr's sharding (0-d) and TypeError "encodes to int8" (bool).
    out = ds.assign(total=ds["prediction"].sum(), clear=ds["prediction"].isel(band=0) > 0.1)
    xharmonise.to_zarr(out.chunk({"y": 30, "x": 30}), "memory://regress-scalar.zarr")
    back = xr.open_zarr("memory://regress-scalar.zarr")
    assert back["clear"].dtype == bool and back["total"].shape == ()


# --------------------------------------------------------------------------- save / load
def test_save_to_a_missing_folder_or_a_folder(model, tmp_path):
    # Was: FileNotFoundError / IsADirectoryError / TypeError / ValueError from os.
    with pytest.raises(ModelFileError, match=r"the folder .*missing does not exist"):
        model.save(tmp_path / "missing" / "m.safetensors")
    with pytest.raises(ModelFileError, match=r"is a folder: give a file path"):
        model.save(tmp_path)
    with pytest.raises(InputTypeError, match=r"path=None"):
        model.save(None)
    with pytest.raises(ModelFileError, match=r"NUL character"):
        model.save(str(tmp_path / "a\x00b"))
    # URLs are welcome since format 2 (tests/test_model_files.py); the folder checks above
    # are for local paths.


def _rewrite(src, dst, **changes):
    with safe_open(str(src), framework="numpy") as f:
        meta = json.loads(f.metadata()["xharmonise"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for key, value in changes.items():
        part = "fit_report" if key == "metrics" else "mapping"
        if value is None:
            meta[part].pop(key)
        else:
            meta[part][key] = value
    save_file(tensors, str(dst), metadata={"xharmonise": json.dumps(meta)})
    return dst


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"sigmas": None}, r"no mapping 'sigmas' entry"),  # was KeyError
        ({"factor": "x"}, r"'factor' is 'x'"),  # was ValueError: invalid literal for int()
        ({"metrics": 3}, r"'metrics' is 3"),  # was TypeError: not iterable
        ({"net_config": {"method": "calibnet", "n_bands": 1.5}}, r"'n_bands' is 1.5"),  # TypeError
    ],
)
def test_load_refuses_damaged_metadata(model, tmp_path, changes, match):
    good = model.save(tmp_path / "good.safetensors")
    bad = _rewrite(good, tmp_path / "bad.safetensors", **changes)
    with pytest.raises(ModelFileError, match=match):
        xharmonise.load(bad)


def test_load_refuses_a_path_of_the_wrong_type():
    # Was: TypeError: expected str, bytes or os.PathLike object, not int.
    with pytest.raises(InputTypeError, match=r"path=3"):
        xharmonise.load(3)


# --------------------------------------------------------------------------- long run
def test_one_pixel_training_steps_are_refused(pair):
    # Was: ValueError from BatchNorm: expected more than 1 value per channel.
    with pytest.raises(InputValueError, match=r"batch_size=1 with patch_size=1.*raise"):
        _fit(pair.src, pair.ref, method="calibnet", patch_size=1, batch_size=1, iterations=1)


def test_one_band_pair_with_one_training_pixel_is_refused(pair):
    # Was: the same BatchNorm ValueError, from the data rather than the options.
    with pytest.raises(InputValueError, match=r"only 1 clear pixel\(s\) to train on"):
        _fit(
            pair.src.isel(band=[0]),
            pair.ref.isel(band=[0]),
            method="calibnet",
            patch_size=1,
            max_patches=3,
            iterations=1,
        )


def test_geographic_mask_layer_lands_on_its_own_grid():
    # Was: KeyError: 'y' (odc-geo names geographic axes latitude / longitude).
    clm = xr.DataArray(
        np.array([[0, 1], [2, 0]], np.uint8),
        dims=("y", "x"),
        coords={"y": [45.0002, 45.0001], "x": [6.0001, 6.0002]},
    ).rio.write_crs("EPSG:4326")
    mask = xharmonise.cloud_mask_from_clm(clm, resolution=0.00005)
    assert mask.dims == ("y", "x") and mask.shape == (4, 4)


def test_mask_layer_that_misses_like_is_refused(pair):
    # Was: odc-geo's ValueError (Points of LinearRing do not form a closed linestring)
    # from a chunked layer 400 km away from like (Web Mercator vs UTM).
    scl = _scl_in_metres("EPSG:3857")
    with pytest.raises(NoOverlapError, match=r"the SCL and like do not overlap"):
        xharmonise.cloud_mask_from_scl(scl.chunk(), classes=(8, 9), like=pair.ref)
