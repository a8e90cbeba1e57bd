"""Cloud masks from real Sentinel-2 L2A products, on the grid :func:`xharmonise.fit` wants.

``fit(src, ref, mask=...)`` takes a boolean (y, x) mask on the reference grid, True where
the reference is cloudy or otherwise unusable. Level-2A products ship that information
in their own formats:

- ESA's Sen2Cor writes a *scene classification* (``SCL``), one class code per 20 m pixel
  (:data:`SCL_CLASSES`); :func:`cloud_mask_from_scl` turns chosen classes into a mask.
- CNES's MAJA (the Theia / MUSCATE products) writes a *cloud mask* (``CLM_R1`` at 10 m,
  ``CLM_R2`` at 20 m) as an 8-bit field of flags (:data:`CLM_BITS`);
  :func:`cloud_mask_from_clm` turns chosen bits into a mask.

Both land the mask exactly on the 10 m grid (or on the grid of ``like=``): each coarse
pixel becomes the block of fine pixels whose centres it contains (nearest neighbour, so a
20 m pixel becomes 2 x 2 pixels at 10 m), by index selection when the CRS are the same --
exact, lazy, no resampling arithmetic -- and by odc-geo nearest reprojection otherwise.
Dask-backed inputs stay lazy. Fine pixels the product does not cover come out True
(unknown is unusable), like the SCL's own no-data class.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import dask.array as da
import numpy as np
import odc.geo.xr  # noqa: F401  (registers the .odc accessor)
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from affine import Affine
from odc.geo.geobox import GeoBox
from scipy import ndimage

from xharmonise import checks
from xharmonise.checks import type_name
from xharmonise.errors import (
    DimensionError,
    GridError,
    InputTypeError,
    InputValueError,
    NoOverlapError,
)
from xharmonise.grid import geobox_of, resolution_of

__all__ = [
    "CLM_BITS",
    "CLM_BITS_NATIVE",
    "CLM_CLOUD_BITS",
    "MAX_DILATE",
    "SCL_CLASSES",
    "SCL_CLOUD_CLASSES",
    "cloud_mask_from_clm",
    "cloud_mask_from_scl",
    "dilate_mask",
]

#: Sen2Cor scene classification codes (Sentinel-2 L2A product specification).
SCL_CLASSES: dict[int, str] = {
    0: "no data",
    1: "saturated or defective",
    2: "dark area pixels (topographic casted shadows in recent processing baselines)",
    3: "cloud shadows",
    4: "vegetation",
    5: "not vegetated",
    6: "water",
    7: "unclassified (cloud low probability in early products)",
    8: "cloud medium probability",
    9: "cloud high probability",
    10: "thin cirrus",
    11: "snow or ice",
}

#: SCL classes masked by default: the reference is not a trustworthy surface reflectance
#: there. 0 (no data): nothing to trust, and it matches pixels outside the product.
#: 1 (saturated or defective): the radiometry is wrong. 3, 8, 9, 10 (cloud shadows,
#: medium- and high-probability clouds, thin cirrus): the paper drops every patch with
#: cloud in the reference, and cirrus or medium-probability clouds bias reflectances
#: enough to bend a fitted mapping. Left valid: 2 (dark areas / topographic shadows)
#: and 11 (snow or ice) are real surfaces that both sensors see, and masking them would
#: empty whole mountain scenes; add them when the source was acquired under another sun
#: or snow cover. 7 (unclassified) is mostly bright ground; 4, 5, 6 are clear surfaces.
SCL_CLOUD_CLASSES: tuple[int, ...] = (0, 1, 3, 8, 9, 10)

#: Bits of the MAJA cloud mask ``CLM_R1``/``CLM_R2`` in Theia's MUSCATE products (Theia
#: Sentinel-2 L2A product format, labo.obs-mip.fr/multitemp; bit b has value 2**b).
CLM_BITS: dict[int, str] = {
    0: "all clouds except the thinnest, and all shadows",
    1: "all clouds except the thinnest",
    2: "clouds detected by mono-temporal thresholds",
    3: "clouds detected by multi-temporal thresholds",
    4: "thinnest clouds",
    5: "shadows of clouds detected in the image",
    6: "shadows of clouds outside the image",
    7: "high clouds detected at 1.38 µm",
}

#: The same bits in MAJA's *native* output format (MAJA run by the user, e.g. with
#: start_maja): bits 0 and 1 mean the same, bits 2-7 are ordered differently.
CLM_BITS_NATIVE: dict[int, str] = {
    0: "all clouds except the thinnest, and all shadows",
    1: "all clouds except the thinnest",
    2: "shadows of clouds detected in the image",
    3: "shadows of clouds outside the image",
    4: "clouds detected by mono-temporal thresholds",
    5: "clouds detected by multi-temporal thresholds",
    6: "thinnest clouds",
    7: "high clouds detected at 1.38 µm",
}

#: CLM bits masked by default: all of them, i.e. any flag set. Every bit flags a cloud
#: or a cloud shadow (the thinnest clouds included, which MAJA's summary bit 0 leaves
#: out), in both layouts, so the default needs no knowledge of which layout a file uses.
#: ``bits=(0,)`` follows MAJA's own summary instead.
CLM_CLOUD_BITS: tuple[int, ...] = tuple(range(8))


def cloud_mask_from_scl(
    scl: xr.DataArray,
    *,
    classes: Iterable[int] = SCL_CLOUD_CLASSES,
    like: xr.DataArray | xr.Dataset | None = None,
    resolution: float = 10.0,
    dilate: int = 0,
) -> xr.DataArray:
    """Boolean cloud mask from a Sen2Cor scene classification (SCL), on the 10 m grid.

    Parameters
    ----------
    scl : xarray.DataArray
        The SCL band, integer class codes (uint8 in L2A products), (y, x) or (1, y, x)
        with a CRS, typically at 20 m, e.g. ``rioxarray.open_rasterio(path)``; or
        (time, y, x) for a series (odc-stac's ``load(items, bands=["SCL"])["SCL"]``),
        which gives one mask per date, (time, y, x).
    classes : iterable of int
        SCL codes that count as cloud or unusable (see :data:`SCL_CLASSES`). The default
        :data:`SCL_CLOUD_CLASSES` is (0, 1, 3, 8, 9, 10): no data, saturated or defective,
        cloud shadows, medium- and high-probability clouds, thin cirrus; snow (11) and dark
        areas / topographic shadows (2) are real surfaces and stay valid.
    like : xarray.DataArray or xarray.Dataset, optional
        A raster (e.g. the 10 m reference image) whose grid the mask must land on exactly:
        the result has its ``y``/``x`` coordinates and CRS. Its pixels must not be coarser
        than the SCL's. Pixels outside the SCL come out True.
    resolution : float
        Without ``like``: the output pixel size, in CRS units; it must divide the SCL's
        (20 m / 10 m = 2: each SCL pixel becomes 2 x 2 pixels in phase with it).
    dilate : int
        Grow the mask by this many output pixels (a disk), to cover cloud edges that the
        classification misses; 0 to :data:`MAX_DILATE`.

    Returns
    -------
    xarray.DataArray
        Boolean (y, x), True = cloud or unusable, with the CRS; Dask-backed (lazy) when
        ``scl`` is. Pass it to :func:`xharmonise.fit` as ``mask=``.

    Raises
    ------
    InputTypeError
        ``scl``, ``like``, ``classes``, ``resolution`` or ``dilate`` is of the wrong type,
        or ``scl`` does not hold integers.
    InputValueError
        ``scl`` has several bands, or ``classes``, ``resolution`` or ``dilate`` is beyond
        its limits.
    MissingCRSError
        ``scl`` (or ``like``) has no CRS.
    GridError
        ``resolution`` does not divide the SCL's pixel size, ``like`` is coarser than the
        SCL, or a grid is irregular.
    NoOverlapError
        ``like`` and the SCL do not overlap.

    Examples
    --------
    >>> import numpy as np, xarray as xr, rioxarray
    >>> scl = xr.DataArray(
    ...     np.array([[4, 9], [3, 11]], np.uint8), dims=("y", "x"),
    ...     coords={"y": [5110.0, 5090.0], "x": [10.0, 30.0]},
    ... ).rio.write_crs("EPSG:32632")
    >>> mask = cloud_mask_from_scl(scl)
    >>> mask.values.astype(int)
    array([[0, 0, 1, 1],
           [0, 0, 1, 1],
           [1, 1, 0, 0],
           [1, 1, 0, 0]])
    >>> mask.x.values.tolist(), mask.rio.crs.to_epsg()
    ([5.0, 15.0, 25.0, 35.0], 32632)
    """
    if _dated(scl):
        # One mask per date (odc-stac loads SCL as (time, y, x)), for a reference series.
        return _per_date(
            scl,
            lambda one: cloud_mask_from_scl(
                one, classes=classes, like=like, resolution=resolution, dilate=dilate
            ),
        )
    band = _single_band(scl, "the SCL", fix="the SCL layer (e.g. *_SCL_20m.jp2)")
    codes = _codes(classes, "classes", valid=range(len(SCL_CLASSES)), what="SCL class")
    _options(like=like, resolution=resolution, dilate=dilate)
    flags = band.isin(codes)
    mask = _on_grid(flags, band, like=like, resolution=resolution, name="the SCL")
    mask = _dilated(mask, dilate)
    mask.attrs = {
        "long_name": "cloud mask (True = cloud or unusable)",
        "source": "Sen2Cor SCL classes " + " ".join(str(c) for c in codes),
        "dilation_pixels": int(dilate),
    }
    return mask


def cloud_mask_from_clm(
    clm: xr.DataArray,
    *,
    bits: Iterable[int] = CLM_CLOUD_BITS,
    like: xr.DataArray | xr.Dataset | None = None,
    resolution: float = 10.0,
    dilate: int = 0,
) -> xr.DataArray:
    """Boolean cloud mask from a MAJA (Theia) ``CLM`` bit field, on the 10 m grid.

    Parameters
    ----------
    clm : xarray.DataArray
        The CLM band, integer flags (uint8 in Theia products), (y, x) or (1, y, x) with a
        CRS: ``CLM_R1`` (10 m) or ``CLM_R2`` (20 m, upsampled like the SCL).
    bits : iterable of int
        Bit positions (0 = least significant) that count as cloud: a pixel is True when
        any of them is set. The default :data:`CLM_CLOUD_BITS` (all eight) masks any flag,
        the thinnest clouds and every shadow included, whatever the layout. Bits 0 and 1
        mean the same in both layouts (:data:`CLM_BITS` for Theia's MUSCATE products,
        :data:`CLM_BITS_NATIVE` for MAJA's native output); the others do not.
    like, resolution, dilate
        As in :func:`cloud_mask_from_scl`.

    Returns
    -------
    xarray.DataArray
        Boolean (y, x), True = cloud, with the CRS; lazy when ``clm`` is Dask-backed.

    Raises
    ------
    InputTypeError, InputValueError
        As in :func:`cloud_mask_from_scl`, for ``clm`` and ``bits``.
    MissingCRSError, GridError
        As in :func:`cloud_mask_from_scl`.

    Examples
    --------
    >>> import numpy as np, xarray as xr, rioxarray
    >>> clm = xr.DataArray(
    ...     np.array([[0, 1 << 4], [1 | 2, 1 << 5]], np.uint8), dims=("y", "x"),
    ...     coords={"y": [5105.0, 5095.0], "x": [5.0, 15.0]},
    ... ).rio.write_crs("EPSG:32632")
    >>> cloud_mask_from_clm(clm).values.astype(int)  # any flag
    array([[0, 1],
           [1, 1]])
    >>> cloud_mask_from_clm(clm, bits=(0,)).values.astype(int)  # MAJA's summary bit
    array([[0, 0],
           [1, 0]])
    """
    if _dated(clm):
        return _per_date(
            clm,
            lambda one: cloud_mask_from_clm(
                one, bits=bits, like=like, resolution=resolution, dilate=dilate
            ),
        )
    band = _single_band(clm, "the CLM", fix="the CLM_R1 or CLM_R2 layer")
    width = band.dtype.itemsize * 8
    positions = _codes(bits, "bits", valid=range(width), what=f"bit of a {band.dtype} field")
    _options(like=like, resolution=resolution, dilate=dilate)
    # One integer holding every chosen bit; Python int so that it never overflows.
    selected = sum(1 << b for b in positions)
    flags = (band & np.asarray(selected).astype(band.dtype)) != 0
    mask = _on_grid(flags, band, like=like, resolution=resolution, name="the CLM")
    mask = _dilated(mask, dilate)
    mask.attrs = {
        "long_name": "cloud mask (True = cloud)",
        "source": "MAJA CLM bits " + " ".join(str(b) for b in positions),
        "dilation_pixels": int(dilate),
    }
    return mask


def _codes(values: Iterable[int], arg: str, *, valid: range, what: str) -> tuple[int, ...]:
    """Sorted, unique integer codes within ``valid``, or an error naming the fix."""
    # Anything may come in: checked below, element by element.
    given: list[Any]
    if isinstance(values, int | np.integer):
        given = [values]
    else:
        try:
            given = list(values)
        except TypeError:
            given = [values]
    if isinstance(values, str) or any(
        isinstance(v, bool | np.bool_) or not isinstance(v, int | np.integer) for v in given
    ):
        raise InputTypeError(
            f"{arg}={values!r} is not a list of integers: give e.g. {arg}={tuple(valid)[-3:-1]}"
        )
    codes = tuple(sorted({int(v) for v in given}))
    if not codes:
        raise InputValueError(
            f"{arg} is empty, so nothing would be masked: give at least one {what}, or "
            "pass mask=None to fit"
        )
    bad = [c for c in codes if c not in valid]
    if bad:
        raise InputValueError(
            f"{arg} holds {bad}, not a {what} ({valid.start} to {valid.stop - 1}): "
            f"remove {'it' if len(bad) == 1 else 'them'}"
        )
    return codes


#: Largest ``dilate=``, in output pixels: 10 km at 10 m, far beyond any cloud edge; more
#: only makes each Dask block read an ever wider ring of its neighbours.
MAX_DILATE = 1000


# Most output pixels per layer pixel along a side (20 m to 2 cm); beyond it, the grid
# alone (one coordinate per output pixel) would fill the memory.
_MAX_SPLIT = 1000


def _options(*, like: Any, resolution: Any, dilate: Any) -> None:
    """Refuse a ``like``, ``resolution`` or ``dilate`` of the wrong type or beyond its
    limits, before any work."""
    if like is not None and not isinstance(like, xr.DataArray | xr.Dataset):
        raise InputTypeError(
            f"like is a {type_name(like)}: pass the xarray image whose grid the mask must "
            "land on (e.g. the 10 m reference), or like=None"
        )
    checks.real(resolution, "resolution", minimum=0, above_minimum=True)
    checks.integer(dilate, "dilate", minimum=0, maximum=MAX_DILATE)


def _dated(arr: Any) -> bool:
    return isinstance(arr, xr.DataArray) and "time" in arr.dims and arr.sizes["time"] > 1


def _per_date(arr: xr.DataArray, one: Callable[[xr.DataArray], xr.DataArray]) -> xr.DataArray:
    """``one`` applied to each date of ``arr``, stacked along its ``time`` coordinate."""
    masks = [one(arr.isel(time=i)) for i in range(arr.sizes["time"])]
    stacked = xr.concat(masks, dim="time", coords="minimal", compat="override")
    if "time" in arr.coords:
        stacked = stacked.assign_coords(time=arr["time"].values)
    stacked.attrs = dict(masks[0].attrs)
    return stacked


def _single_band(arr: Any, name: str, *, fix: str) -> xr.DataArray:
    """The (y, x) integer band of a (y, x) or (1, y, x) DataArray."""
    if not isinstance(arr, xr.DataArray):
        raise InputTypeError(
            f"{name} is a {type_name(arr)}: pass an xarray.DataArray, e.g. "
            "rioxarray.open_rasterio(path)"
        )
    extra = [d for d in arr.dims if d not in ("y", "x")]
    if extra:
        n = math.prod(arr.sizes[d] for d in extra)
        if n != 1:
            raise DimensionError(
                f"{name} has {n} layers along {extra}: pass only {fix}, e.g. "
                f"{name.removeprefix('the ')}.isel({extra[0]}=0) for the first"
            )
        arr = arr.isel({d: 0 for d in extra}, drop=True)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise InputTypeError(
            f"{name} holds {arr.dtype} values, not integer codes: open it without "
            "masked=True (rioxarray.open_rasterio(path) keeps the product's uint8), or "
            "convert it with .fillna(0).astype('uint8')"
        )
    return arr


def _on_grid(
    flags: xr.DataArray,
    band: xr.DataArray,
    *,
    like: xr.DataArray | xr.Dataset | None,
    resolution: float,
    name: str,
) -> xr.DataArray:
    """``flags`` (on ``band``'s grid) moved to the target grid by nearest neighbour."""
    src = geobox_of(band, name)
    src_res = abs(src.resolution.x), abs(src.resolution.y)
    if like is None:
        # _options checked resolution: a finite number above 0.
        factors = [r / resolution for r in src_res]
        if max(factors) > _MAX_SPLIT:
            raise GridError(
                f"resolution={resolution:g} cuts each of {name}'s {max(src_res):g} pixels into "
                f"{max(factors):.3g} per side, more than {_MAX_SPLIT}: give a resolution in "
                "its CRS units (metres for Sentinel-2), e.g. resolution=10"
            )
        if any(f < 1 - 1e-6 or abs(f - round(f)) > 1e-6 for f in factors):
            raise GridError(
                f"{name} has {src_res[0]:g} x {src_res[1]:g} pixels, not a whole multiple "
                f"of resolution={resolution:g}: give a resolution that divides it, or "
                "like=<the 10 m image> to land on that image's grid"
            )
        fx, fy = (round(f) for f in factors)
        target = GeoBox(
            (src.shape[0] * fy, src.shape[1] * fx),
            src.affine @ Affine.scale(1 / fx, 1 / fy),
            src.crs,
        )
        # (y, x) or, in a geographic CRS, (latitude, longitude): by position.
        ys, xs = (c.values for c in target.coords.values())
    else:
        target = geobox_of(like, "like")
        # geobox_of raises MissingCRSError for grids without a CRS.
        assert target.crs is not None, "geobox_of gives grids with a CRS"
        overlap = src.extent.to_crs(target.crs) & target.extent
        if overlap.is_empty or overlap.area == 0:
            raise NoOverlapError(
                f"{name} and like do not overlap: check that both cover the same place and "
                "that their CRS are right"
            )
        ys = np.asarray(like["y"].values, dtype=np.float64)
        xs = np.asarray(like["x"].values, dtype=np.float64)
        # Compare pixel sizes in the mask's CRS units (metres for any S2 product).
        tgt_res = resolution_of(target, src.crs)
        if tgt_res > max(src_res) * (1 + 1e-6):
            raise GridError(
                f"like has {tgt_res:g} pixels, coarser than {name}'s {max(src_res):g}: a "
                "nearest-neighbour mask would skip cloudy pixels; give a like at least as "
                "fine as the mask (e.g. the 10 m image)"
            )
    if target.crs == src.crs:
        out = _select(flags, src, ys, xs)
    else:
        out = _reproject(flags.rio.write_crs(src.crs), target)
    out = out.assign_coords(y=ys, x=xs)
    if like is not None and "spatial_ref" in like.coords:
        out = out.assign_coords(spatial_ref=like["spatial_ref"])
    else:
        out = out.rio.write_crs(target.crs).rio.write_transform(target.affine)
    out.name = "cloud_mask"
    out.encoding = {}
    return out


def _select(flags: xr.DataArray, src: GeoBox, ys: np.ndarray, xs: np.ndarray) -> xr.DataArray:
    """Same CRS: for every target pixel, the source pixel that contains its centre."""
    a = src.affine
    cols = np.floor((xs - a.c) / a.a).astype(np.int64)
    rows = np.floor((ys - a.f) / a.e).astype(np.int64)
    col_in = (cols >= 0) & (cols < src.shape[1])
    row_in = (rows >= 0) & (rows < src.shape[0])
    flags = flags.drop_vars([c for c in flags.coords if c not in ("y", "x")])
    picked = flags.isel(
        y=np.clip(rows, 0, src.shape[0] - 1), x=np.clip(cols, 0, src.shape[1] - 1)
    ).drop_vars(["y", "x"])
    if col_in.all() and row_in.all():
        return picked
    inside = xr.DataArray(row_in[:, None] & col_in[None, :], dims=("y", "x"))
    return picked.where(inside, True)


def _reproject(flags: xr.DataArray, target: GeoBox) -> xr.DataArray:
    """Other CRS: odc-geo nearest reprojection; pixels outside the source become True."""
    from odc.geo.xr import xr_reproject

    # No attributes: odc-geo would read the product's _FillValue as the flags' no-data.
    flags = flags.astype(np.uint8).drop_attrs(deep=False)
    flags.encoding = {}
    out = xr_reproject(flags, target, resampling="nearest", dst_nodata=1)
    out = out.rename(dict(zip(out.dims, ("y", "x"), strict=True)))
    return (out != 0).drop_vars([c for c in out.coords if c not in ("y", "x")])


def dilate_mask(block: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within ``radius`` (Euclidean, centre to centre) of a True pixel.

    From the distance transform, so the cost does not grow with the radius as a disk
    footprint's would. Distances are square roots of integers: exact at the radius.

    Examples
    --------
    >>> block = np.zeros((3, 5), bool)
    >>> block[1, 2] = True
    >>> dilate_mask(block, 1).astype(int)
    array([[0, 0, 1, 0, 0],
           [0, 1, 1, 1, 0],
           [0, 0, 1, 0, 0]])
    """
    if not block.any():
        return block.astype(bool, copy=True)
    return ndimage.distance_transform_edt(~block) <= radius


def _dilated(mask: xr.DataArray, pixels: int) -> xr.DataArray:
    """``mask`` grown by a disk of ``pixels`` radius; exact across Dask chunk seams."""
    if pixels == 0:
        return mask
    data = mask.data
    if isinstance(data, da.Array):
        # Each chunk sees `pixels` neighbours from the next (at most the whole image,
        # which is all a larger disk can reach); outside the image is clear.
        grown = data.map_overlap(
            dilate_mask,
            depth={axis: min(int(pixels), n) for axis, n in enumerate(data.shape)},
            boundary="none",
            dtype=bool,
            meta=np.array((), dtype=bool),
            radius=int(pixels),
        )
    else:
        grown = dilate_mask(np.asarray(data), int(pixels))
    return mask.copy(data=grown)
