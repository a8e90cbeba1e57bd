"""Grids: CRS and transform of inputs, and the phase-aligned source grid.

The paper projects the source onto the reference CRS with a grid *in phase* with the
reference grid: each reference pixel covers exactly ``factor x factor`` source pixels.
:func:`pair_grid` finds that grid over the overlap of both images and
:func:`align_source` puts the source on it, lazily; when the source already lies on it
(same CRS, resolution and phase) it is only sliced, never resampled.
"""

from __future__ import annotations

import math
import warnings
from typing import overload

import numpy as np
import odc.geo.xr  # noqa: F401  (registers the .odc accessor)
import rioxarray.exceptions
import xarray as xr
from affine import Affine
from odc.geo.crs import CRS as OdcCRS
from odc.geo.geobox import GeoBox
from pyproj import CRS

from xharmonise.errors import GridError, MissingCRSError, NoOverlapError
from xharmonise.records import PairGrid

__all__ = [
    "PairGrid",
    "align_source",
    "centred_window",
    "geobox_of",
    "pair_grid",
    "resolution_of",
    "translate",
]

# Fraction of a pixel below which two grids are taken as identical (float noise in
# transforms read from files).
_PIXEL_TOL = 1e-6


def _check_coords(da: xr.DataArray | xr.Dataset, name: str) -> None:
    for dim in ("y", "x"):
        if dim not in da.dims:
            raise GridError(
                f"{name} has dims {da.dims}, without {dim!r}: give a (band, y, x) array "
                "with spatial dims named y and x (rioxarray's default)"
            )
        if da.sizes[dim] == 0:
            raise GridError(f"{name} has no pixels along {dim}: give a non-empty image")
        if dim not in da.coords:
            raise GridError(
                f"{name} has no {dim} coordinates: give it its pixel-centre coordinates (e.g. "
                "open it with rioxarray.open_rasterio, or da.rio.write_transform(...) and "
                "assign_coords from da.rio.transform())"
            )
        values = np.asarray(da[dim].values)
        if values.dtype.kind not in "iuf" or not np.isfinite(values).all():
            raise GridError(
                f"{name} has {dim} coordinates that are not finite numbers: give it its "
                f"pixel-centre coordinates (e.g. from rioxarray.open_rasterio)"
            )
        c = values.astype(np.float64)
        if c.size > 2:
            step = np.diff(c)
            if not np.allclose(step, step[0], rtol=1e-6, atol=abs(step[0]) * 1e-6):
                raise GridError(
                    f"{name} has irregular {dim} coordinates: resample it to a regular grid "
                    "first (e.g. with rioxarray's reproject)"
                )
    if da.sizes["x"] > 1 and da["x"].values[1] < da["x"].values[0]:
        raise GridError(f"{name} has descending x coordinates: sort them with .sortby('x')")
    if da.sizes["y"] > 1 and da["y"].values[1] > da["y"].values[0]:
        raise GridError(
            f"{name} has ascending y coordinates (south-up): flip it with "
            ".isel(y=slice(None, None, -1)) so that y decreases downwards"
        )


def geobox_of(da: xr.DataArray | xr.Dataset, name: str = "input") -> GeoBox:
    """The :class:`odc.geo.geobox.GeoBox` of a (band, y, x) DataArray (or Dataset).

    Reads rioxarray conventions (``spatial_ref`` coordinate / ``crs`` attribute) and
    odc-geo conventions alike.

    Parameters
    ----------
    da : xarray.DataArray or xarray.Dataset
        Georeferenced raster with ``y`` and ``x`` dimensions.
    name : str
        How to call the input in error messages.

    Returns
    -------
    odc.geo.geobox.GeoBox

    Raises
    ------
    MissingCRSError
        If no CRS can be found.
    GridError
        If the coordinates are irregular, flipped or missing.

    Examples
    --------
    >>> from xharmonise.simulate import simulate_pair
    >>> geobox_of(simulate_pair((100, 100)).ref).resolution.x
    10.0
    """
    _check_coords(da, name)
    crs = None
    try:
        crs = da.rio.crs
    except Exception:  # rioxarray raises on malformed grid mappings; odc may still know
        crs = None
    if crs is None:
        with warnings.catch_warnings():
            # odc-geo warns about a dangling grid_mapping; we raise a clearer error below.
            warnings.simplefilter("ignore", UserWarning)
            crs = da.odc.crs
    if crs is None:
        raise MissingCRSError(
            f"{name} has no CRS: set one with da.rio.write_crs('EPSG:…') "
            "(or open the file with rioxarray.open_rasterio, which reads it)"
        )
    x = np.asarray(da["x"].values, dtype=np.float64)
    y = np.asarray(da["y"].values, dtype=np.float64)
    pcrs = CRS.from_user_input(crs)
    if pcrs.is_geographic and (np.abs(x).max() > 360 or np.abs(y).max() > 90):
        raise GridError(
            f"{name} has a geographic CRS ({pcrs.to_string()}) but coordinates that are not "
            f"degrees (x {x.min():g} to {x.max():g}, y {y.min():g} to {y.max():g}): set its "
            "real CRS with da.rio.write_crs(...) (e.g. the UTM zone, for metres)"
        )
    if x.size > 1 and y.size > 1:
        rx, ry = (x[-1] - x[0]) / (x.size - 1), (y[-1] - y[0]) / (y.size - 1)
    else:
        # One pixel along an axis: only a written transform tells the pixel size there.
        try:
            written = da.rio.transform(recalc=False)
        except rioxarray.exceptions.RioXarrayError:
            written = Affine.identity()
        if written.is_identity:
            raise GridError(
                f"{name} is {da.sizes['y']} x {da.sizes['x']} pixels without a transform: "
                "give an image of at least 2 x 2 pixels, or write its transform with "
                "da.rio.write_transform(...)"
            )
        rx = (x[-1] - x[0]) / (x.size - 1) if x.size > 1 else written.a
        ry = (y[-1] - y[0]) / (y.size - 1) if y.size > 1 else written.e
    transform = Affine(rx, 0, x[0] - rx / 2, 0, ry, y[0] - ry / 2)
    return GeoBox((da.sizes["y"], da.sizes["x"]), transform, pcrs)


def _crs(gbox: GeoBox) -> OdcCRS:
    # GeoBoxes from geobox_of, and the grids made from them, always have a CRS.
    assert gbox.crs is not None, "geobox_of raises MissingCRSError for inputs without one"
    return gbox.crs


def _crs_text(gbox: GeoBox) -> str:
    """``EPSG:32631`` (or the WKT of CRS without a code), for messages."""
    return str(CRS.from_user_input(_crs(gbox)).to_string())


def resolution_of(gbox: GeoBox, crs: CRS | OdcCRS | None = None) -> float:
    """Mean pixel size of ``gbox`` in the units of ``crs`` (default: its own)."""
    if crs is None or CRS.from_user_input(crs) == gbox.crs:
        return math.sqrt(abs(gbox.resolution.x * gbox.resolution.y))
    area = gbox.extent.to_crs(crs).area
    return math.sqrt(area / (gbox.shape[0] * gbox.shape[1]))


def pair_grid(src: xr.DataArray, ref: xr.DataArray) -> PairGrid:
    """Find the reference-phased source grid over the overlap of ``src`` and ``ref``.

    The factor is the integer closest to ref_res / src_res (5 for 2 m vs 10 m; 2 for
    5 m; 3 for 3 m, on a 3.33 m grid), recorded so that later steps do not guess it.

    Parameters
    ----------
    src, ref : xarray.DataArray
        High-resolution source and reference rasters (band, y, x) with a CRS.

    Returns
    -------
    PairGrid

    Raises
    ------
    MissingCRSError, GridError, NoOverlapError

    Examples
    --------
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((100, 100))
    >>> g = pair_grid(pair.src, pair.ref)
    >>> g.factor, tuple(g.ref.shape), tuple(g.src.shape)
    (5, (20, 20), (100, 100))
    """
    src_gb = geobox_of(src, "the source")
    ref_gb = geobox_of(ref, "the reference")
    if not ref_gb.axis_aligned:
        raise GridError("the reference grid is rotated: reproject it north-up first")
    ref_res = abs(ref_gb.resolution.x)
    if not math.isclose(ref_res, abs(ref_gb.resolution.y), rel_tol=1e-6):
        raise GridError(
            f"the reference pixels are not square ({ref_gb.resolution}): resample it to "
            "square pixels first"
        )
    src_res = resolution_of(src_gb, ref_gb.crs)
    if not (math.isfinite(src_res) and src_res > 0):
        box = src_gb.extent.boundingbox
        raise GridError(
            f"the source's footprint (x {box.left:g} to {box.right:g}, y {box.bottom:g} to "
            f"{box.top:g} in {_crs_text(src_gb)}) cannot be placed in the reference CRS "
            f"({_crs_text(ref_gb)}): check that the source's CRS is right (degrees for "
            "EPSG:4326, metres for UTM) and set it with da.rio.write_crs(...)"
        )
    if src_res > ref_res * 1.01:
        raise GridError(
            f"the source ({src_res:g} per pixel) is coarser than the reference "
            f"({ref_res:g}): pass the high-resolution image as src and the reference as ref"
        )
    factor = max(1, round(ref_res / src_res))

    overlap = src_gb.extent.to_crs(_crs(ref_gb)) & ref_gb.extent
    if overlap.is_empty or overlap.area == 0:
        raise NoOverlapError(
            "the source and the reference do not overlap: check that both cover the same "
            "place and that their CRS are right"
        )
    left, bottom, right, top = overlap.boundingbox
    inv = ~ref_gb.affine
    c0, r0 = inv @ (left, top)
    c1, r1 = inv @ (right, bottom)
    col0, col1 = math.ceil(min(c0, c1) - _PIXEL_TOL), math.floor(max(c0, c1) + _PIXEL_TOL)
    row0, row1 = math.ceil(min(r0, r1) - _PIXEL_TOL), math.floor(max(r0, r1) + _PIXEL_TOL)
    if col1 <= col0 or row1 <= row0:
        raise NoOverlapError(
            "the overlap of the source and the reference holds no whole reference pixel: "
            "give images that share a larger area"
        )
    ref_crop = ref_gb[row0:row1, col0:col1]
    src_affine = ref_crop.affine @ Affine.scale(1.0 / factor)
    src_target = GeoBox(
        (ref_crop.shape[0] * factor, ref_crop.shape[1] * factor), src_affine, ref_gb.crs
    )
    return PairGrid(
        factor=factor,
        ref=ref_crop,
        src=src_target,
        ref_rows=slice(row0, row1),
        ref_cols=slice(col0, col1),
        src_resolution=src_res,
    )


def _integer_offset(src_gb: GeoBox, target: GeoBox) -> tuple[int, int] | None:
    """Row/col of ``target``'s origin in ``src_gb`` when both share CRS, pixel and phase."""
    if src_gb.crs != target.crs:
        return None
    a, b = src_gb.affine, target.affine
    if not all(
        math.isclose(p, q, rel_tol=1e-9)
        for p, q in zip((a.a, a.b, a.d, a.e), (b.a, b.b, b.d, b.e), strict=True)
    ):
        return None
    col, row = ~a @ (b.c, b.f)
    if abs(col - round(col)) > _PIXEL_TOL or abs(row - round(row)) > _PIXEL_TOL:
        return None
    return round(row), round(col)


def align_source(
    src: xr.DataArray, grid: PairGrid, *, resampling: str = "bilinear"
) -> xr.DataArray:
    """Put the source on the phase-aligned grid ``grid.src``, lazily.

    A source already on that grid (same CRS, pixel size and phase) is sliced without
    resampling; otherwise it is reprojected with odc-geo. Source pixels outside the
    source footprint come out NaN.

    Parameters
    ----------
    src : xarray.DataArray
        Floating-point source reflectance (band, y, x), NaN at no-data.
    grid : PairGrid
        From :func:`pair_grid`.
    resampling : str
        Resampling method when reprojection is needed (any odc-geo / GDAL name).

    Returns
    -------
    xarray.DataArray
        The source on ``grid.src``: Dask-backed if ``src`` is.

    Examples
    --------
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((100, 100), src_offset=(1.0, 0.5))
    >>> align_source(pair.src, pair_grid(pair.src, pair.ref)).shape
    (4, 95, 95)
    """
    src_gb = geobox_of(src, "the source")
    target = grid.src
    offset = _integer_offset(src_gb, target)
    if offset is not None:
        row, col = offset
        h, w = target.shape
        pad_before = (max(0, -row), max(0, -col))
        inside = src.isel(
            y=slice(max(0, row), max(0, row + h)), x=slice(max(0, col), max(0, col + w))
        )
        if inside.sizes["y"] == h and inside.sizes["x"] == w:
            return inside
        # The target sticks out of the source: pad with NaN, which marks no-data.
        padded = inside.pad(
            y=(pad_before[0], h - inside.sizes["y"] - pad_before[0]),
            x=(pad_before[1], w - inside.sizes["x"] - pad_before[1]),
            constant_values=np.nan,
        )
        coords = target.coords
        return padded.assign_coords(y=coords["y"].values, x=coords["x"].values)
    src = src.rio.write_nodata(np.nan, encoded=False)
    out = src.odc.reproject(target, resampling=resampling, dst_nodata=np.nan)
    return out.rename({k: v for k, v in (("latitude", "y"), ("longitude", "x")) if k in out.dims})


@overload
def translate(
    obj: xr.DataArray, east: float, north: float, *, crs: CRS | OdcCRS | str | None = None
) -> xr.DataArray: ...
@overload
def translate(
    obj: xr.Dataset, east: float, north: float, *, crs: CRS | OdcCRS | str | None = None
) -> xr.Dataset: ...
def translate(
    obj: xr.DataArray | xr.Dataset,
    east: float,
    north: float,
    *,
    crs: CRS | OdcCRS | str | None = None,
) -> xr.DataArray | xr.Dataset:
    """Move the georeferencing of ``obj`` by (``east``, ``north``), leaving values untouched.

    The ``x``/``y`` coordinates and the ``spatial_ref`` transform (which rioxarray and
    odc-geo read first) both move, so every reader sees the same new position.

    Parameters
    ----------
    obj : xarray.DataArray or xarray.Dataset
        Georeferenced raster with ``y`` and ``x`` dimensions and a CRS.
    east, north : float
        Translation in units of ``crs``, east and north positive.
    crs : pyproj.CRS, odc.geo.crs.CRS or str, optional
        CRS in which the translation is given; by default ``obj``'s own. When it differs,
        the translation is converted at the centre of ``obj`` (a translation in one
        projection is one in another only locally, which is all a shift of a few pixels
        needs).

    Returns
    -------
    xarray.DataArray or xarray.Dataset
        A new object (the input is not modified), same kind as ``obj``.

    Examples
    --------
    >>> from xharmonise.simulate import simulate_pair
    >>> src = simulate_pair((100, 100)).src
    >>> moved = translate(src, 3.0, -1.0)
    >>> float(moved.x[0] - src.x[0]), float(moved.y[0] - src.y[0])
    (3.0, -1.0)
    >>> moved.rio.transform().c - src.rio.transform().c
    3.0
    """
    da = obj if isinstance(obj, xr.DataArray) else next(iter(obj.data_vars.values()))
    gbox = geobox_of(da, "the input")
    dx, dy = float(east), float(north)
    if crs is not None and CRS.from_user_input(crs) != gbox.crs:
        from pyproj import Transformer

        cx, cy = gbox.affine @ (gbox.shape[1] / 2, gbox.shape[0] / 2)
        to_crs = Transformer.from_crs(gbox.crs, crs, always_xy=True)
        back = Transformer.from_crs(crs, gbox.crs, always_xy=True)
        px, py = to_crs.transform(cx, cy)
        qx, qy = back.transform(px + dx, py + dy)
        dx, dy = float(qx - cx), float(qy - cy)
    out = obj.assign_coords(
        x=obj["x"].copy(data=obj["x"].values + dx), y=obj["y"].copy(data=obj["y"].values + dy)
    )
    if "spatial_ref" in out.coords:
        # The GeoTransform attribute written directly (rio.write_transform would also add
        # a grid_mapping encoding that clashes with grid_mapping attributes on writing).
        moved = Affine.translation(dx, dy) * gbox.affine
        ref = out["spatial_ref"].copy()
        ref.attrs = {**ref.attrs, "GeoTransform": " ".join(repr(float(v)) for v in moved.to_gdal())}
        out = out.assign_coords(spatial_ref=ref)
    return out


def centred_window(shape: tuple[int, ...], side: int) -> tuple[slice, slice]:
    """The (y, x) slices of a window of at most ``side`` pixels centred in ``shape``.

    Parameters
    ----------
    shape : tuple of int
        Array shape; the last two axes are (y, x).
    side : int
        Largest window side, in pixels; an axis shorter than it is taken whole.

    Returns
    -------
    tuple of slice
        ``(y, x)`` unit-step slices.

    Examples
    --------
    >>> centred_window((4, 10, 3), 6)
    (slice(2, 8, None), slice(0, 3, None))
    """
    out = []
    for n in shape[-2:]:
        size = min(n, side)
        start = (n - size) // 2
        out.append(slice(start, start + size))
    return out[0], out[1]
