"""Every bad input gets a named HarmoniseError whose message names the problem and the fix."""

import numpy as np
import pytest
import xarray as xr

import xharmonise
from xharmonise.errors import (
    BandMismatchError,
    DimensionError,
    GridError,
    HarmoniseError,
    InputTypeError,
    InputValueError,
    MissingCRSError,
    NoOverlapError,
    NoValidPatchesError,
    UnknownMethodError,
)
from xharmonise.simulate import simulate_pair


@pytest.fixture(scope="module")
def pair():
    return simulate_pair((400, 400), seed=21)


@pytest.fixture(scope="module")
def model(pair):
    return xharmonise.fit(pair.src, pair.ref, method="linear", patch_size=16)


def _fit(src, ref, **kw):
    kw.setdefault("method", "linear")
    kw.setdefault("patch_size", 16)
    return xharmonise.fit(src, ref, **kw)


def test_all_errors_are_harmonise_errors():
    for err in (
        BandMismatchError,
        GridError,
        InputValueError,
        MissingCRSError,
        NoOverlapError,
        NoValidPatchesError,
        UnknownMethodError,
        InputTypeError,
        DimensionError,
    ):
        assert issubclass(err, HarmoniseError)


def test_errors_keep_the_builtin_ancestry_python_code_expects():
    # `except ValueError` / `except TypeError` written against NumPy-style APIs still works.
    assert issubclass(InputValueError, ValueError)
    assert issubclass(DimensionError, InputValueError)
    assert issubclass(InputTypeError, TypeError)


def test_missing_crs(pair):
    with pytest.raises(MissingCRSError, match=r"no CRS.*write_crs"):
        _fit(pair.src.drop_vars("spatial_ref"), pair.ref)
    with pytest.raises(MissingCRSError, match=r"the reference has no CRS"):
        _fit(pair.src, pair.ref.drop_vars("spatial_ref"))


def test_no_overlap(pair):
    far = simulate_pair((400, 400), seed=21, origin=(700000.0, 4800000.0))
    with pytest.raises(NoOverlapError, match=r"do not overlap"):
        _fit(pair.src, far.ref)


def test_overlap_smaller_than_one_patch(pair):
    with pytest.raises(NoOverlapError, match=r"smaller than one patch"):
        _fit(pair.src.isel(x=slice(0, 80)), pair.ref)


def test_band_count_mismatch(pair):
    with pytest.raises(BandMismatchError, match=r"4 bands.*3.*bands="):
        _fit(pair.src, pair.ref.isel(band=[0, 1, 2]))


def test_unknown_band_names(pair):
    with pytest.raises(BandMismatchError, match=r"unknown band names \['B9'\]"):
        _fit(pair.src, pair.ref, bands={"B0": "B9"})


def test_all_patches_cloudy(pair):
    with pytest.raises(NoValidPatchesError, match=r"none of the \d+ patches.*cloud") as err:
        _fit(pair.src, pair.ref, mask=xr.ones_like(pair.mask))
    assert err.value.cloudy == err.value.total > 0


def test_all_patches_nodata(pair):
    src = pair.src.where(pair.src["x"] < 0)
    with pytest.raises(NoValidPatchesError, match=r"no-data") as err:
        _fit(src, pair.ref)
    assert err.value.nodata == err.value.total


def test_infinite_values(pair):
    src = pair.src.copy()
    src[0, 200, 200] = np.inf
    with pytest.raises(InputValueError, match=r"1 infinite values.*NaN"):
        _fit(src, pair.ref)


def test_integer_dn_without_scale(pair):
    dn = (pair.src * 1e4).fillna(0).astype("uint16")
    with pytest.raises(InputValueError, match=r"integer values.*scale="):
        _fit(dn, pair.ref)


def test_values_far_outside_reflectance(pair):
    with pytest.raises(InputValueError, match=r"does not look like reflectance.*scale="):
        _fit(pair.src * 255, pair.ref)


def test_two_dimensional_input(pair):
    with pytest.raises(InputValueError, match=r"no 'band' dimension.*expand_dims"):
        _fit(pair.src.isel(band=0), pair.ref)


def test_descending_and_irregular_coordinates(pair):
    with pytest.raises(GridError, match=r"descending x.*sortby"):
        _fit(pair.src.isel(x=slice(None, None, -1)), pair.ref)
    with pytest.raises(GridError, match=r"ascending y"):
        _fit(pair.src, pair.ref.isel(y=slice(None, None, -1)))
    keep = np.r_[0:100, 101:400]
    with pytest.raises(GridError, match=r"irregular x"):
        _fit(pair.src.isel(x=keep), pair.ref)


def test_mask_on_another_grid(pair):
    with pytest.raises(GridError, match=r"mask is not on the reference grid"):
        _fit(pair.src, pair.ref, mask=pair.mask.isel(y=slice(2, None)))


def test_source_coarser_than_reference(pair):
    with pytest.raises(GridError, match=r"coarser than the reference.*src"):
        _fit(pair.ref, pair.src)


def test_unknown_method(pair):
    with pytest.raises(UnknownMethodError, match=r"'magic'.*linear, calibnet"):
        _fit(pair.src, pair.ref, method="magic")


def test_model_applied_to_other_bands(pair, model):
    with pytest.raises(BandMismatchError, match=r"trained on 4"):
        xharmonise.predict(pair.src.isel(band=[0, 1, 2]), model)
    renamed = pair.src.assign_coords(band=["B3", "B2", "B1", "B0"])
    with pytest.raises(BandMismatchError, match=r"select and order"):
        xharmonise.predict(renamed, model)


def test_model_applied_with_other_scaling(pair, model):
    dn = (pair.src * 1e4).fillna(0).astype("uint16")
    with pytest.raises(InputValueError, match=r"trained on float32.*scale="):
        xharmonise.predict(dn, model)
    out = xharmonise.predict(dn.assign_attrs(scale_factor=1e-4, _FillValue=0), model)
    ref = xharmonise.predict(pair.src, model)
    np.testing.assert_allclose(out["prediction"].values, ref["prediction"].values, atol=1e-3)


def test_warnings_are_user_warnings_exported_at_the_top():
    for name in ("DetailLossWarning", "UnknownBandWarning", "CalibrationWarning"):
        assert issubclass(getattr(xharmonise, name), UserWarning)
    assert issubclass(xharmonise.OutOfDomainWarning, UserWarning)
    assert xharmonise.OutOfDomainWarning.__module__ == "xharmonise.errors"
    assert "OutOfDomainWarning" in xharmonise.__all__


def test_applicability_asked_as_something_else_than_a_bool(pair, model):
    with pytest.raises(InputTypeError, match="with_applicability=1 is a int: give True or False"):
        xharmonise.predict(pair.src, model, with_applicability=1)
