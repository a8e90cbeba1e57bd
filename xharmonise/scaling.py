"""From product values to reflectance: scale, offset and no-data, lazily.

Real products store reflectance as integer DN with a scale factor, an additive offset and
a no-data value (Pleiades DN x 1e-4; Sentinel-2 L2A (DN - 1000) x 1e-4 since processing
baseline 04.00). Everything downstream works on float32 reflectance with NaN at no-data.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import dask.array
import numpy as np
import xarray as xr

from xharmonise import psf
from xharmonise.checks import type_name
from xharmonise.errors import BandMismatchError, DimensionError, InputTypeError, InputValueError

__all__ = ["as_band_array", "band_names", "scaling_like_training", "to_reflectance"]


def as_band_array(
    obj: Any, name: str, *, series: bool = False, variables: Sequence[str] | None = None
) -> xr.DataArray:
    """The raster in ``obj`` as a (band, y, x) DataArray, or an error naming the fix.

    A DataArray is taken as given. A Dataset with one variable is that variable; a
    Dataset with one variable per band (odc-stac's ``load``) is stacked along a new
    ``band`` dimension, lazily, when its variables are Sentinel-2 band names (``B02``,
    ``red``, ``nir08``...) or ``variables`` names them. Extra dimensions of length 1 (a
    single date, a singleton level) are dropped; any other shape is refused: a ``time``
    dimension with several dates (unless ``series``), other dimension names
    (``lat``/``lon``), another order, no pixels.

    Parameters
    ----------
    obj : xarray.DataArray or xarray.Dataset
        An image, or a Dataset holding it.
    name : str
        How to call it in error messages ("the source").
    series : bool
        Accept a ``time`` dimension of several dates: the result is then
        (time, band, y, x) (stackstac's order).
    variables : sequence of str, optional
        The Dataset variables that are the bands, in order (others, e.g. ``SCL``, are
        left out).

    Returns
    -------
    xarray.DataArray
        (band, y, x), or (time, band, y, x) for a series of several dates; the input
        itself when it already is, else a new object.

    Raises
    ------
    InputTypeError
        Not an xarray object, or values that are not real numbers.
    BandMismatchError
        A Dataset whose variables are not all bands, or do not stack.
    DimensionError
        Dimensions other than (band, y, x) that cannot be dropped.
    InputValueError
        No pixels.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> ds = xr.Dataset({"phr": (("band", "y", "x"), np.zeros((4, 2, 2)))})
    >>> as_band_array(ds, "the source").name
    'phr'
    >>> one_date = xr.DataArray(np.zeros((1, 4, 2, 2)), dims=("time", "band", "y", "x"))
    >>> as_band_array(one_date, "the reference").dims
    ('band', 'y', 'x')
    >>> odc = xr.Dataset({b: (("time", "y", "x"), np.zeros((3, 2, 2))) for b in ("red", "nir")})
    >>> stacked = as_band_array(odc, "the reference", series=True)
    >>> stacked.dims, band_names(stacked)
    (('time', 'band', 'y', 'x'), ['red', 'nir'])
    """
    if isinstance(obj, xr.Dataset):
        obj = _from_dataset(obj, name, variables)
    if not isinstance(obj, xr.DataArray):
        raise InputTypeError(
            f"{name} is a {type_name(obj)}: pass an xarray.DataArray (band, y, x) with a CRS, "
            "e.g. rioxarray.open_rasterio(path)"
        )
    if obj.dtype.kind not in "iufb":
        raise InputTypeError(
            f"{name} holds {obj.dtype} values: give real reflectances or integer DN (e.g. "
            f"{_var(name)}.real for complex values)"
        )
    dated = series and "time" in obj.dims and obj.sizes["time"] > 1
    if dated:
        # One date has the layout every date has: check it (and drop its length-1 dims).
        first = _band_yx(obj.isel(time=0, drop=True), name)
        single = [d for d in obj.dims if d not in ("time", *first.dims)]
        da = obj.isel({d: 0 for d in single}, drop=True).transpose("time", *first.dims)
    else:
        da = _band_yx(obj, name)
    empty = [d for d in da.dims if da.sizes[d] == 0]
    if empty:
        sizes = ", ".join(f"{da.sizes[d]} along {d!r}" for d in da.dims)
        raise InputValueError(
            f"{name} is empty ({sizes}): give an image with at least one band and one pixel "
            "(check the selection that cut it)"
        )
    return da


def _from_dataset(ds: xr.Dataset, name: str, variables: Sequence[str] | None) -> xr.DataArray:
    """The image a Dataset holds: its only variable, or its band variables stacked."""
    names = [str(v) for v in ds.data_vars]
    var = _var(name)
    if len(names) == 1 and variables is None:
        return ds[names[0]]
    if variables is not None:
        missing = [v for v in variables if v not in names]
        if missing:
            raise BandMismatchError(
                f"{name} is a Dataset without the variable(s) {missing} named in bands=: "
                f"its variables are {names}"
            )
        wanted = list(variables)
    else:
        others = [v for v in names if psf.s2_band(v) is None]
        if others:
            raise BandMismatchError(
                f"{name} is a Dataset whose variables {others} are no Sentinel-2 band "
                f"names (of {names}): say which variables are the bands, e.g. "
                f"{var}[{[v for v in names if v not in others] or ['B02', '...']}] or "
                "bands={src_band: ref_variable, ...}, or stack them yourself with "
                f"{var}.to_dataarray('band')"
            )
        wanted = names
    arrays = [ds[v] for v in wanted]
    dims = {a.dims for a in arrays}
    if len(dims) != 1:
        raise BandMismatchError(
            f"{name}'s band variables {wanted} have different dimensions {sorted(dims)}: "
            "give them one grid (e.g. odc.stac.load(..., resolution=10))"
        )
    stacked = xr.concat(arrays, dim="band", coords="minimal", compat="override", join="exact")
    stacked = stacked.assign_coords(band=wanted)
    # odc-stac keeps the no-data value in each variable's attributes; concat keeps only
    # the first's. Keep what every band agrees on, as one image's attributes would be.
    stacked.attrs = {
        key: value
        for key, value in arrays[0].attrs.items()
        if all(_same(a.attrs.get(key), value) for a in arrays[1:])
    }
    if "spatial_ref" in ds.coords and "spatial_ref" not in stacked.coords:
        stacked = stacked.assign_coords(spatial_ref=ds["spatial_ref"])
    return stacked.transpose("band", ...)


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True))
    except TypeError:  # equal_nan on objects that are not numbers
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def _var(name: str) -> str:
    """The variable a user likely holds ``name`` in, for the code in messages."""
    return {"the source": "src", "the reference": "ref", "the mask": "mask"}.get(name, "da")


_SPATIAL_ALIASES = {"lat": "y", "latitude": "y", "lon": "x", "longitude": "x"}


def _band_yx(da: xr.DataArray, name: str) -> xr.DataArray:
    """``da`` as (band, y, x), dropping extra dimensions of length 1."""
    var = _var(name)
    aliases = {d: _SPATIAL_ALIASES[str(d)] for d in da.dims if str(d) in _SPATIAL_ALIASES}
    if aliases and not {"y", "x"} & set(da.dims):
        renames = ", ".join(f"{k!r}: {v!r}" for k, v in aliases.items())
        raise DimensionError(
            f"{name} has dims {da.dims}: name its spatial dims y and x with "
            f"{var}.rename({{{renames}}}) (rioxarray's names; the grid must be projected)"
        )
    if "time" in da.dims and da.sizes["time"] > 1:
        fix = (
            "harmonise one acquisition at a time, e.g. src.isel(time=0) (the reference may "
            "be a time series; the source is one image)"
            if name == "the source"
            else f"select one date, e.g. {var}.isel(time=0)"
        )
        raise DimensionError(f"{name} has a time dimension with {da.sizes['time']} dates: {fix}")
    extra = [d for d in da.dims if d not in ("band", "y", "x")]
    single = [d for d in extra if da.sizes[d] == 1]
    if single:
        da = da.isel({d: 0 for d in single}, drop=True)
    extra = [d for d in extra if d not in single]
    if "band" not in da.dims and len(extra) == 1 and {"y", "x"} <= set(da.dims):
        raise DimensionError(
            f"{name} has dims {da.dims} and no 'band' dimension: if {extra[0]!r} holds the "
            f"bands, rename it with {var}.rename({{{extra[0]!r}: 'band'}})"
        )
    if extra:
        sizes = ", ".join(f"{da.sizes[d]} along {d!r}" for d in extra)
        raise DimensionError(
            f"{name} has dims {da.dims}, with {sizes}: give one (band, y, x) image, e.g. "
            f"{var}.isel({extra[0]}=0)"
        )
    if "band" not in da.dims:
        band_names(da)  # raises the clear error
    missing = [d for d in ("y", "x") if d not in da.dims]
    if missing:
        raise DimensionError(
            f"{name} has dims {da.dims}, without {missing[0]!r}: give a (band, y, x) array "
            "with spatial dims named y and x (rioxarray's default)"
        )
    if da.dims != ("band", "y", "x"):
        raise DimensionError(
            f"{name} has dims {da.dims}: transpose it to (band, y, x) with "
            f"{var}.transpose('band', 'y', 'x')"
        )
    return da


def band_names(da: xr.DataArray) -> list[str]:
    """Band names of a (band, y, x) DataArray.

    String ``band`` coordinates are names; rioxarray's integer band numbers are replaced
    by its ``long_name`` attribute when that lists one name per band.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> band_names(xr.DataArray(np.zeros((2, 1, 1)), dims=("band", "y", "x"),
    ...                         coords={"band": [1, 2]}))
    ['1', '2']
    """
    if "band" not in da.dims:
        raise DimensionError(
            f"the input has dims {da.dims} and no 'band' dimension: add one with "
            "da.expand_dims(band=['name']) (a single-band image is (1, y, x))"
        )
    if "band" in da.coords:
        values = [str(v) for v in da["band"].values]
        long_name = da.attrs.get("long_name")
        if (
            np.issubdtype(da["band"].dtype, np.integer)
            and isinstance(long_name, tuple | list)
            and len(long_name) == len(values)
        ):
            return [str(v) for v in long_name]
        return values
    return [str(i + 1) for i in range(da.sizes["band"])]


def _attr_number(da: xr.DataArray, key: str, name: str, *, where: str = "attrs") -> float | None:
    """The number held by attribute (or encoding) ``key``, or an error naming it."""
    value = getattr(da, where).get(key)
    if value is None:
        return None
    number = np.asarray(value)
    if number.size != 1 or number.dtype.kind not in "iufb":
        raise InputValueError(
            f"{name}'s {key} attribute is {value!r}, not a number: correct it (e.g. "
            f"da.attrs[{key!r}] = ...) or remove it with da.drop_attrs()"
        )
    return float(number.reshape(()))


def _nodata_of(da: xr.DataArray, name: str = "the input") -> float | None:
    for key in ("_FillValue", "nodata", "missing_value"):
        for where in ("attrs", "encoding"):
            value = _attr_number(da, key, name, where=where)
            if value is not None:
                return value
    try:
        nd = da.rio.nodata
    except Exception:  # a malformed grid mapping must not hide an explicit _FillValue
        nd = None
    return None if nd is None else float(nd)


def _dn_to_reflectance(
    block: np.ndarray, *, nodata: float | None, scale: float, offset: float
) -> np.ndarray:
    # In one task per chunk, in float32 throughout: xarray's where/astype/multiply/add
    # made five tasks and a float64 copy of integer DN; the same float32 arithmetic, in
    # the same order, so the values are identical.
    out = block.astype(np.float32)
    out *= np.float32(scale)
    out += np.float32(offset)
    if nodata is not None:
        out[block == nodata] = np.nan
    return out


def to_reflectance(
    da: xr.DataArray,
    *,
    scale: float | None = None,
    offset: float | None = None,
    name: str = "input",
) -> xr.DataArray:
    """Float32 reflectance with NaN at no-data, lazily for Dask inputs.

    Parameters
    ----------
    da : xarray.DataArray
        Raster (band, y, x), float reflectance or integer DN.
    scale, offset : float, optional
        Reflectance = DN * scale + offset. Default to the ``scale_factor`` and
        ``add_offset`` attributes (1 and 0 for floating-point inputs without them).
    name : str
        How to call the input in error messages.

    Returns
    -------
    xarray.DataArray
        float32, same dims, coords and CRS; the input is not modified.

    Raises
    ------
    InputValueError
        Integer input without any scale information.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> dn = xr.DataArray(np.array([[[0, 1500]]], np.uint16), dims=("band", "y", "x"),
    ...                   attrs={"scale_factor": 1e-4, "_FillValue": 0})
    >>> refl = to_reflectance(dn)
    >>> refl.dtype, refl.values.astype(float).round(3).tolist()
    (dtype('float32'), [[[nan, 0.15]]])
    """
    if "band" not in da.dims:
        band_names(da)  # raises the clear error
    integer = np.issubdtype(da.dtype, np.integer) or da.dtype == bool
    if scale is None:
        scale = _attr_number(da, "scale_factor", name)
        if scale is not None and not (math.isfinite(scale) and scale > 0):
            raise InputValueError(
                f"{name}'s scale_factor attribute is {scale!r}: pass the right DN scale with "
                "scale= (e.g. 1e-4), which takes precedence over the attribute"
            )
    if offset is None:
        offset = _attr_number(da, "add_offset", name)
        if offset is not None and not math.isfinite(offset):
            raise InputValueError(
                f"{name}'s add_offset attribute is {offset!r}: pass the right reflectance "
                "offset with offset= (e.g. 0.0), which takes precedence over the attribute"
            )
        offset = 0.0 if offset is None else offset
    if scale is None:
        if integer:
            raise InputValueError(
                f"{name} holds integer values ({da.dtype}) without a scale_factor attribute: "
                "pass scale= (e.g. scale=1e-4 for Pleiades or Sentinel-2 DN, 1/255 for "
                "8-bit images) so that values become reflectances"
            )
        scale = 1.0
    nodata = _nodata_of(da, name)
    if nodata is not None and np.isnan(nodata):
        nodata = None  # NaN is NaN already
    convert = functools.partial(_dn_to_reflectance, nodata=nodata, scale=scale, offset=offset)
    data = da.data
    if isinstance(data, dask.array.Array):
        meta = np.empty((0,) * da.ndim, np.float32)
        out = da.copy(data=dask.array.map_blocks(convert, data, dtype=np.float32, meta=meta))
    else:
        out = da.copy(data=convert(np.asarray(data)))
    out.attrs = {
        k: v
        for k, v in da.attrs.items()
        if k not in ("scale_factor", "add_offset", "_FillValue", "nodata")
    }
    out.encoding = {}
    if "spatial_ref" in da.coords:
        out = out.assign_coords(spatial_ref=da["spatial_ref"])
        out = out.rio.write_nodata(np.nan, encoded=False)
    return out


def scaling_like_training(
    da: xr.DataArray,
    trained: tuple[str, float, float],
    *,
    scale: float | None = None,
    offset: float | None = None,
) -> tuple[float | None, float | None]:
    """The ``(scale, offset)`` that turn ``da`` into reflectance the way training did.

    An image's own ``scale_factor``/``add_offset`` attributes, or explicit values, win.
    An integer image without them is scaled like the training source when that was integer
    DN too (the usual case: the same product, re-opened without its metadata).

    Parameters
    ----------
    da : xarray.DataArray
        The image to scale.
    trained : (str, float, float)
        The training source's dtype, scale and offset (``Harmoniser.src_dtype``,
        ``.src_scale``, ``.src_offset``).
    scale, offset : float, optional
        Explicit values; None means: from the attributes, else from training.

    Returns
    -------
    (float or None, float or None)
        Arguments for :func:`to_reflectance`; None leaves its attribute default.

    Raises
    ------
    InputValueError
        An integer image without scale information for a model trained on float
        reflectance: nothing says how its DN relate to reflectance.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> dn = xr.DataArray(np.zeros((1, 1, 1), np.uint16), dims=("band", "y", "x"))
    >>> scaling_like_training(dn, ("uint16", 1e-4, -0.1))
    (0.0001, -0.1)
    """
    if not np.issubdtype(da.dtype, np.integer):
        return scale, offset
    dtype, trained_scale, trained_offset = trained
    from_training = np.issubdtype(np.dtype(dtype), np.integer)
    # rioxarray gives every GeoTIFF it opens scale_factor 1 and add_offset 0: on integer DN
    # they say nothing (no reflectance product stores DN as reflectance), so the scaling a
    # fit was given explicitly for the same product still applies.
    unscaled = _attr_number(da, "scale_factor", "the image") == 1.0 and not _attr_number(
        da, "add_offset", "the image"
    )
    if scale is None and ("scale_factor" not in da.attrs or (unscaled and from_training)):
        if not from_training:
            raise InputValueError(
                f"the image holds integer values ({da.dtype}) but the model was trained "
                f"on {dtype} reflectance: give the DN scale with scale= (e.g. 1e-4)"
            )
        scale = trained_scale
    if offset is None and ("add_offset" not in da.attrs or unscaled) and from_training:
        offset = trained_offset
    return scale, offset
