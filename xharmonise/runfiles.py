"""What the command line and the demo share: the rasters a user names, and the text
printed about a fitted model.

:mod:`xharmonise.cli` and :mod:`xharmonise.demo` both open files the way a user gives
them (lazily, with Dask chunks, refusing what cannot be read with one clear message) and
print the same metrics table and shift estimates; both import them from here, so neither
imports the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from xharmonise.errors import HarmoniseError

if TYPE_CHECKING:
    import xarray as xr

    from xharmonise.harmoniser import Harmoniser

__all__ = [
    "InputError",
    "format_metrics",
    "format_table",
    "one_line",
    "open_mask",
    "open_raster",
    "shift_estimates",
]


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
    mask = open_raster(path, what="the mask", chunks=chunks)
    nodata = mask.rio.nodata
    cloud = mask.isel(band=0) > 0
    if nodata is not None:
        cloud = cloud & (mask.isel(band=0) != nodata)
    return cloud


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
