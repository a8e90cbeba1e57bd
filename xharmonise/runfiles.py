"""What the command line and the demo share: the rasters a user names, and the text
printed about a fitted model.

:mod:`xharmonise.cli` and :mod:`xharmonise.demo` both open files the way a user gives
them (lazily, with Dask chunks, refusing what cannot be read with one clear message) and
print the same metrics table and shift estimates; both import them from here, so neither
imports the other. A reference time series, as users hold it on disk (one raster per
date, and one cloud mask per date), is stacked here too (:func:`open_series`,
:func:`open_mask_series`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xharmonise.errors import (
    BandMismatchError,
    DateError,
    GridError,
    HarmoniseError,
    InputValueError,
)

if TYPE_CHECKING:
    import numpy as np
    import xarray as xr

    from xharmonise.harmoniser import Harmoniser

__all__ = [
    "InputError",
    "file_date",
    "format_metrics",
    "format_table",
    "one_line",
    "open_mask",
    "open_mask_series",
    "open_raster",
    "open_series",
    "shift_estimates",
]

#: Metadata tags read as a raster's acquisition date (GDAL exposes the TIFF tag in the
#: default domain, and rioxarray reads it as an attribute).
DATE_TAGS = ("TIFFTAG_DATETIME",)

# An ISO day in a file name, YYYYMMDD or YYYY-MM-DD (one separator style), not inside a
# longer number: Sentinel-2 names such as ``..._20240601T105031_...`` match their day.
_NAME_DATE = re.compile(r"(?<!\d)(\d{4})(-?)(\d{2})\2(\d{2})(?!\d)")


class InputError(HarmoniseError, OSError):
    """An input named on the command line cannot be opened or read: a missing file, a
    raster rasterio cannot read, a file of several subdatasets, an unreachable Dask
    scheduler.

    Examples
    --------
    >>> try:
    ...     open_raster("no-such-file.tif", what="the source")
    ... except InputError as err:
    ...     print(err)
    the source no-such-file.tif does not exist or is not a file
    """


def one_line(err: BaseException) -> str:
    """An error's message on one line (its type's name when it has none)."""
    return " ".join(str(err).split()) or type(err).__name__


def open_raster(path: str, *, what: str = "input", chunks: int = 2048) -> xr.DataArray:
    """Open a raster lazily as (band, y, x) with Dask chunks, or raise :class:`InputError`.

    Parameters
    ----------
    path : str
        A local file or anything rasterio reads (``/vsicurl/…``, ``s3://…``).
    what : str
        How to name the input in error messages ("the source", "the mask").
    chunks : int
        Chunk side in pixels along ``y`` and ``x``; bands are one chunk.

    Returns
    -------
    xarray.DataArray
        Integer DN keep their dtype, ``scale_factor``/``add_offset`` and no-data
        attributes, which :func:`xharmonise.fit` turns into reflectance.

    Raises
    ------
    InputError
        The file is missing or unreadable, or holds several subdatasets.
    """
    import rasterio.errors
    import rioxarray
    import xarray as xr

    local = "://" not in path and not path.startswith("/vsi")
    if local and not Path(path).is_file():
        raise InputError(f"{what} {path} does not exist or is not a file")
    try:
        da = rioxarray.open_rasterio(path, chunks={"band": -1, "y": chunks, "x": chunks})
    except (rasterio.errors.RasterioError, OSError) as err:
        raise InputError(f"cannot read {what} {path}: {one_line(err)}") from err
    # Files with subdatasets open as a Dataset, or a list of them when grids differ.
    if not isinstance(da, xr.DataArray) or "band" not in da.dims:
        raise InputError(
            f"{what} {path} holds several subdatasets: open one of them (its GDAL name)"
        )
    return da


def open_mask(path: str, *, chunks: int = 2048) -> xr.DataArray:
    """Open a cloud mask: a 1-band raster on the reference grid, above 0 = cloud.

    The file's no-data value counts as clear.

    Returns
    -------
    xarray.DataArray
        Boolean (y, x), True = cloud, Dask-backed.

    Raises
    ------
    InputError
        As :func:`open_raster`.
    """
    return _cloud(open_raster(path, what="the mask", chunks=chunks))


def _cloud(mask: xr.DataArray) -> xr.DataArray:
    """A mask raster's first band as booleans, True = cloud; its no-data is clear."""
    nodata = mask.rio.nodata
    cloud = mask.isel(band=0) > 0
    if nodata is not None:
        cloud = cloud & (mask.isel(band=0) != nodata)
    return cloud


def file_date(path: str, raster: xr.DataArray | None = None) -> np.datetime64 | None:
    """A raster's acquisition date: its ``TIFFTAG_DATETIME``, else an ISO day in its file
    name (``YYYYMMDD`` or ``YYYY-MM-DD``, the first valid one); None when neither says.

    Parameters
    ----------
    path : str
        The file, as given (only its name is read here).
    raster : xarray.DataArray, optional
        The raster as :func:`open_raster` opened it: its attributes hold the file's tags.

    Examples
    --------
    >>> file_date("S2B_MSIL2A_20240611T105619_N0510_R094_T31TCJ.tif")
    np.datetime64('2024-06-11T00:00:00')
    >>> file_date("s2/2024-06-01_B04.tif"), file_date("s2_latest.tif")
    (np.datetime64('2024-06-01T00:00:00'), None)
    """
    from xharmonise.dates import as_date

    attrs: dict[str, Any] = dict(raster.attrs) if raster is not None else {}
    for tag in DATE_TAGS:
        if tag in attrs:
            try:
                return as_date(attrs[tag], f"the {tag} tag of {path}")
            except DateError:  # a tag some writer filled with another format: the name
                break
    # Folders are often dated too ("2024/06/01/B04.tif" is not one day): the name only.
    name = path.rstrip("/").rsplit("/", 1)[-1]
    for match in _NAME_DATE.finditer(name):
        year, _, month, day = match.groups()
        try:
            return as_date(f"{year}-{month}-{day}", name)
        except DateError:  # 8 digits that are no day, e.g. a tile or orbit number
            continue
    return None


def _grid_mismatch(
    what: str, path: str, raster: xr.DataArray, first_path: str, first: xr.DataArray
) -> str | None:
    """How ``raster`` differs from ``first`` in CRS, size or transform; None if it does not."""
    crs, crs0 = raster.rio.crs, first.rio.crs
    if crs != crs0:
        return f"{what} {path} has the CRS {crs}, {first_path} has {crs0}"
    shape = (raster.sizes["y"], raster.sizes["x"])
    shape0 = (first.sizes["y"], first.sizes["x"])
    if shape != shape0:
        return (
            f"{what} {path} has {shape[0]} x {shape[1]} pixels, {first_path} has "
            f"{shape0[0]} x {shape0[1]}"
        )
    transform, transform0 = raster.rio.transform(), first.rio.transform()
    # A thousandth of a pixel: what float rounding of the same grid can leave.
    if not transform.almost_equals(transform0, precision=1e-3 * abs(transform0.a)):
        return f"{what} {path} has the transform {tuple(transform)[:6]}, {first_path} has " + (
            f"{tuple(transform0)[:6]}"
        )
    return None


_ONE_GRID_FIX = (
    "give rasters of one grid (resample them onto one, e.g. gdalwarp -t_srs, -tr and -te "
    "with the same values for each)"
)


def open_series(
    paths: Sequence[str],
    *,
    dates: Sequence[Any] | None = None,
    what: str = "the reference",
    chunks: int = 2048,
) -> xr.DataArray:
    """Open rasters of one grid, one per date, lazily as (time, band, y, x).

    Each date is ``dates[i]`` when given, else the file's :func:`file_date`. Nothing is
    read but the files' metadata: the stack is a Dask array over the files.

    Parameters
    ----------
    paths : sequence of str
        The rasters, one per date (any order; no date twice).
    dates : sequence, optional
        Their dates, in the same order (ISO strings, ``datetime``...).
    what : str
        How to name the rasters in error messages.
    chunks : int
        Chunk side in pixels along ``y`` and ``x``, as for :func:`open_raster`.

    Returns
    -------
    xarray.DataArray
        (time, band, y, x) with a ``datetime64[ns]`` ``time`` coordinate in the files'
        order, and the first file's attributes (scale, offset, no-data, band
        descriptions) but its date tag.

    Raises
    ------
    InputError
        A file cannot be read (as :func:`open_raster`).
    DateError
        A file without a date when ``dates`` is not given, a date given twice, or
        ``dates`` of another length than ``paths``.
    GridError
        Files of different CRS, size or transform.
    BandMismatchError
        Files of different band counts or band descriptions.
    InputValueError
        Files of different scale, offset or no-data value.

    Examples
    --------
    >>> import tempfile
    >>> from xharmonise.simulate import simulate_series
    >>> series = simulate_series((100, 100), days=(-4, 3))
    >>> folder = Path(tempfile.mkdtemp())
    >>> paths = []
    >>> for t in series.ref["time"].values:
    ...     paths.append(str(folder / f"s2_{str(t)[:10]}.tif"))
    ...     series.ref.sel(time=t).rio.to_raster(paths[-1])
    >>> ref = open_series(paths)
    >>> ref.dims, [str(t)[:10] for t in ref["time"].values]
    (('time', 'band', 'y', 'x'), ['2024-06-11', '2024-06-18'])
    """
    import numpy as np
    import xarray as xr

    from xharmonise.dates import as_date

    if dates is not None and len(dates) != len(paths):
        raise DateError(
            f"{len(dates)} dates for {len(paths)} rasters of {what}: give one date per "
            "raster, in the same order"
        )
    rasters = [open_raster(p, what=what, chunks=chunks) for p in paths]
    times = []
    for i, (path, raster) in enumerate(zip(paths, rasters, strict=True)):
        when = as_date(dates[i], f"the date of {path}") if dates is not None else None
        when = when if when is not None else file_date(path, raster)
        if when is None:
            raise DateError(
                f"{what} {path} has no date: neither a TIFFTAG_DATETIME tag nor a date "
                "(YYYYMMDD or YYYY-MM-DD) in its file name: give the dates of the "
                "rasters in order with --ref-dates (e.g. --ref-dates 2024-06-01,2024-06-11) "
                "or put the date in the file name"
            )
        times.append(when)
    seen: dict[Any, str] = {}
    for path, when in zip(paths, times, strict=True):
        if when in seen:
            raise DateError(
                f"{what} {seen[when]} and {path} have the same date {when}: give one raster "
                "per date (or correct their dates with --ref-dates)"
            )
        seen[when] = path
    first_path, first = paths[0], rasters[0]
    for path, raster in zip(paths[1:], rasters[1:], strict=True):
        mismatch = _grid_mismatch(what, path, raster, first_path, first)
        if mismatch:
            raise GridError(f"{mismatch}: {_ONE_GRID_FIX}")
        _same_bands(what, path, raster, first_path, first)
    stack = xr.concat(
        rasters, dim="time", join="override", coords="minimal", compat="override"
    ).assign_coords(time=np.array(times, dtype="datetime64[ns]"))
    # The first file's date tag would date the whole series.
    stack.attrs = {k: v for k, v in first.attrs.items() if k not in DATE_TAGS}
    return stack


def _same_bands(
    what: str, path: str, raster: xr.DataArray, first_path: str, first: xr.DataArray
) -> None:
    """Refuse a raster whose bands or their scaling differ from the first's."""
    names = first.attrs.get("long_name")
    if raster.sizes["band"] != first.sizes["band"] or raster.attrs.get("long_name") != names:
        described = raster.attrs.get("long_name", raster.sizes["band"])
        raise BandMismatchError(
            f"{what} {path} has the bands {described}, {first_path} has "
            f"{names if names is not None else first.sizes['band']}: give rasters of the "
            "same bands in the same order"
        )
    for key, label in (("scale_factor", "scale"), ("add_offset", "offset")):
        if raster.attrs.get(key) != first.attrs.get(key):
            raise InputValueError(
                f"{what} {path} has the {label} {raster.attrs.get(key)}, {first_path} has "
                f"{first.attrs.get(key)}: give rasters of one product and processing "
                "baseline, or rescale them to one"
            )
    nodata, nodata0 = raster.rio.nodata, first.rio.nodata
    if not (nodata == nodata0 or (nodata != nodata and nodata0 != nodata0)):  # NaN == NaN
        raise InputValueError(
            f"{what} {path} has the no-data value {nodata}, {first_path} has {nodata0}: "
            "set one no-data value for all of them (e.g. gdal_edit.py -a_nodata)"
        )


def open_mask_series(
    paths: Sequence[str], ref: xr.DataArray, ref_paths: Sequence[str], *, chunks: int = 2048
) -> xr.DataArray:
    """Open cloud masks, one per reference date, lazily as boolean (time, y, x).

    Parameters
    ----------
    paths : sequence of str
        Single-band masks, above 0 = cloud (no-data clear), in the order of ``ref_paths``.
    ref : xarray.DataArray
        The (time, band, y, x) series :func:`open_series` opened from ``ref_paths``: the
        masks take its dates and must be on its grid.
    ref_paths : sequence of str
        The reference rasters, to name them in errors.
    chunks : int
        As for :func:`open_raster`.

    Raises
    ------
    InputValueError
        Not one mask per reference raster.
    InputError, GridError
        As :func:`open_raster`; a mask not on the reference grid.

    Examples
    --------
    >>> import tempfile
    >>> from xharmonise.simulate import simulate_series
    >>> series = simulate_series((100, 100), days=(-4, 3), ref_clouds=0.2)
    >>> folder = Path(tempfile.mkdtemp())
    >>> refs, masks = [], []
    >>> for t in series.ref["time"].values:
    ...     day = str(t)[:10]
    ...     refs.append(str(folder / f"s2_{day}.tif"))
    ...     masks.append(str(folder / f"clouds_{day}.tif"))
    ...     series.ref.sel(time=t).rio.to_raster(refs[-1])
    ...     series.mask.sel(time=t).astype("uint8").rio.to_raster(masks[-1])
    >>> mask = open_mask_series(masks, open_series(refs), refs)
    >>> mask.dims, bool((mask == series.mask).all())
    (('time', 'y', 'x'), True)
    """
    import xarray as xr

    if len(paths) != len(ref_paths):
        raise InputValueError(
            f"{len(paths)} masks for {len(ref_paths)} reference rasters: give one mask per "
            "reference raster, in the same order"
        )
    first = ref.isel(time=0, drop=True)
    clouds = []
    for path, ref_path in zip(paths, ref_paths, strict=True):
        raster = open_raster(path, what="the mask", chunks=chunks)
        mismatch = _grid_mismatch("the mask", path, raster, ref_path, first)
        if mismatch:
            raise GridError(f"{mismatch}: give each date's mask on its reference's grid")
        clouds.append(_cloud(raster))
    return xr.concat(
        clouds, dim="time", join="override", coords="minimal", compat="override"
    ).assign_coords(time=ref["time"])


def format_metrics(model: Harmoniser) -> str:
    """The model's test-split metrics as a text table: one row per band and metric.

    Examples
    --------
    >>> import xharmonise
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((400, 400), seed=0)
    >>> model = xharmonise.fit(pair.src, pair.ref, method="linear", patch_size=16)
    >>> print(format_metrics(model).splitlines()[1])
    band  metric                initial    linear     model
    """
    title = (
        f"test-split metrics, reflectance units ({model.patches.get('train', 0)} train / "
        f"{model.patches.get('test', 0)} test patches)"
    )
    return format_table(model.metrics, title)


def format_table(table: xr.DataArray, title: str) -> str:
    """A (band, row, column) table as text under ``title``: one line per band and row
    (a metric, a coverage), the columns (stages) side by side.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> t = xr.DataArray(np.ones((1, 1, 2)), dims=("band", "metric", "stage"),
    ...                  coords={"band": ["B4"], "metric": ["rmse"], "stage": ["a", "b"]})
    >>> print(format_table(t, "scores"))
    scores
    band  metric                     a         b
    B4    rmse                  1.0000    1.0000
    """
    band, row, column = (str(d) for d in table.dims)
    columns = [str(s) for s in table[column].values]
    head = f"{'band':<5} {row:<18} " + " ".join(f"{s:>9}" for s in columns)
    lines = [title, head]
    for b in table[band].values:
        for r in table[row].values:
            values = table.sel({band: b, row: r}).values
            cells = " ".join(f"{v:>9.4f}" for v in values)
            lines.append(f"{b!s:<5} {r!s:<18} {cells}")
    return "\n".join(lines)


def shift_estimates(model: Harmoniser) -> dict[str, tuple[float, float]]:
    """The model's shift estimates, mean over bands, as ``{estimate: (east, north)}`` metres.

    Empty when the model has none (only learned filters and a fit-time phase
    correlation give one).
    """
    # plot draws them per band; the command line says their band means. Imported here so
    # that the CLI starts without matplotlib.
    from xharmonise.plot.figures import shift_estimates as per_band

    return {
        name: (float(values[:, 0].mean()), float(values[:, 1].mean()))
        for name, values in per_band(model).items()
    }
