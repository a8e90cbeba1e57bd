"""Writing results to cloud-optimised Zarr v3 stores with their georeferencing.

Writes are resumable. The metadata (and the small in-memory coordinates) go first; then
every shard-aligned region -- one Dask chunk along ``y`` and ``x``, all bands and
variables -- is written by one task of a single Dask graph, which, once the region's
shards are stored, puts an empty marker object ``.xharmonise/done/<iy>.<ix>`` in the store.
Object stores have no rename, but a PUT of a new object is atomic, so a marker exists only
for a region whose data is fully written. When every region is done, the metadata is
consolidated (this is what marks a store complete) and the markers are deleted.
``resume=True`` on an incomplete store writes only the regions without a marker, after
deleting the temporary files a killed writer leaves in a local store.
"""

from __future__ import annotations

import os
import re
import sys
import uuid
import warnings
from collections.abc import Hashable, Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from itertools import product
from typing import Any, Literal

import dask
import fsspec
import numpy as np
import xarray as xr
import zarr
from dask.base import get_scheduler
from dask.delayed import Delayed
from fsspec.implementations.local import LocalFileSystem
from xarray.conventions import encode_cf_variable
from zarr.codecs import BloscCodec, ZstdCodec

from xharmonise import checks
from xharmonise.errors import InputTypeError, InputValueError, StoreExistsError

__all__ = ["COMPRESSORS", "StoreInfo", "describe", "to_zarr"]

_DEFAULT_SHARD = 2048
# 512: zarr's per-chunk cost dominates the write at 256 (on 512² shards of harmonised
# float32, a 256² inner chunk writes 25-40 % slower), and 512² is COG's usual tile.
_DEFAULT_INNER = 512
# Bookkeeping prefix inside the store; zarr ignores it (with a warning while listing).
_MARKERS = ".xharmonise"
_DONE = f"{_MARKERS}/done"
_REGION_DIMS = ("y", "x")
# zarr's local store writes each object to ``<name>.<uuid4 hex>.partial`` and renames it;
# a writer killed in between leaves the temporary file behind.
_PARTIAL = re.compile(r"\.[0-9a-f]{32}\.partial$")


def _largest_divisor(n: int, limit: int) -> int:
    for d in range(min(n, limit), 0, -1):
        if n % d == 0:
            return d
    return 1


def _regular_chunks(ds: xr.Dataset, shard: int) -> xr.Dataset:
    """Give every variable regular Dask chunks (all equal but the last): one per shard.

    Dimensions other than ``y`` and ``x`` get one chunk, so that a (y, x) chunk is a
    whole region that one task writes.
    """
    whole = {d: -1 for d in ds.dims if d not in _REGION_DIMS}
    if not ds.chunks:
        return ds.chunk({**whole, **{d: shard for d in _REGION_DIMS if d in ds.dims}})
    fixes: dict[Hashable, int] = dict(whole)
    for dim in _REGION_DIMS:
        if dim not in ds.chunks:
            continue
        chunks = ds.chunks[dim]
        if len(set(chunks[:-1])) > 1 or (len(chunks) > 1 and chunks[-1] > chunks[0]):
            fixes[dim] = max(chunks)
    return ds.chunk(fixes)


def _zarr_kwargs(storage_options: dict[str, Any] | None) -> dict[str, Any]:
    # zarr rejects storage_options for local paths, so pass them only when given.
    return {"storage_options": storage_options} if storage_options else {}


def _store_exists(store: str, storage_options: dict[str, Any] | None) -> bool:
    try:
        zarr.open_group(store, mode="r", **_zarr_kwargs(storage_options))
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError):
        return False
    return True


@contextmanager
def _quiet_zarr() -> Iterator[None]:
    """Silence the two zarr warnings our own bookkeeping triggers, and only those."""
    with warnings.catch_warnings():
        # Consolidated metadata is not in the Zarr v3 spec yet, but every reader we target
        # (xarray, zarr-python) uses it to open remote stores in one request.
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        # Listing an unfinished store meets our `.xharmonise/` markers, which are no
        # Zarr node; zarr skips them with this warning.
        warnings.filterwarnings(
            "ignore", message=f"Object at {_MARKERS} is not recognized", category=UserWarning
        )
        yield


def _codec(compressor: str, level: int | None, itemsize: int) -> Any:
    """The Zarr codec of ``compressor`` at ``level`` (None: its default)."""
    if compressor == "lz4":
        # Byte shuffle first: float32 exponents and high mantissa bytes group together.
        clevel = _LZ4_DEFAULT if level is None else level
        return BloscCodec(cname="lz4", clevel=clevel, shuffle="shuffle", typesize=itemsize)
    return ZstdCodec(level=_ZSTD_DEFAULT if level is None else level)


def _prepare(
    ds: xr.Dataset, inner_chunks: int, compressor: str, compression_level: int | None
) -> tuple[xr.Dataset, dict[Hashable, dict[str, Any]]]:
    """Chunk ``ds`` one chunk per shard, load what is not regional, build the encoding."""
    ds = _regular_chunks(ds, _DEFAULT_SHARD)
    # Fixed-width unicode has no Zarr v3 specification; variable-length strings do.
    ds = ds.assign_coords(
        {k: c.astype(object) for k, c in ds.coords.items() if c.dtype.kind == "U"}
    )
    # Coordinates and variables without both region dimensions are small: load them so
    # that the metadata step writes them, and the regions hold only the large arrays.
    ds = ds.assign_coords({k: c.compute() for k, c in ds.coords.items() if c.chunks})
    for name, var in ds.data_vars.items():
        if not set(_REGION_DIMS) <= set(var.dims):
            ds[name] = var.compute()
    encoding: dict[Hashable, dict[str, Any]] = {}
    for name, var in ds.data_vars.items():
        shard = tuple(c[0] for c in var.chunks) if var.chunks else var.shape
        inner = tuple(
            _largest_divisor(s, 1 if dim == "band" else inner_chunks)
            for dim, s in zip(var.dims, shard, strict=True)
        )
        codec = _codec(compressor, compression_level, var.dtype.itemsize)
        encoding[name] = {"compressors": (codec,)}
        if var.ndim:  # zarr shards arrays with at least one dimension only
            encoding[name].update(chunks=inner, shards=shard)
        if np.issubdtype(var.dtype, np.floating):
            encoding[name]["fill_value"] = np.nan
    return ds, encoding


def _regional(ds: xr.Dataset) -> list[str]:
    names = []
    for n, v in ds.data_vars.items():
        if set(_REGION_DIMS) <= set(v.dims):
            # Zarr keys are strings; xarray's to_zarr and zarr's Group raise a TypeError
            # for any other name too, only later.
            if not isinstance(n, str):
                raise TypeError(f"variable names must be strings to be written to Zarr: {n!r}")
            names.append(n)
    return names


def _array(group: zarr.Group, name: str) -> zarr.Array:
    arr = group[name]
    assert isinstance(arr, zarr.Array), f"{name!r} is known to be a variable, not a group"
    return arr


def _regions(ds: xr.Dataset) -> list[tuple[int, ...]]:
    """Index (iy, ix) of every region: the Dask chunk grid along y and x."""
    if not _regional(ds):
        return []
    return list(product(*(range(len(ds.chunks[d])) for d in _REGION_DIMS)))


def _marker_name(region: tuple[int, ...]) -> str:
    return ".".join(map(str, region))


def _done_regions(fs: fsspec.AbstractFileSystem, root: str) -> set[str]:
    path = f"{root}/{_DONE}"
    # Markers may come from other processes: never trust a cached listing.
    fs.invalidate_cache(path)
    try:
        return {p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)}
    except FileNotFoundError:
        return set()


def _clear_markers(fs: fsspec.AbstractFileSystem, root: str) -> None:
    path = f"{root}/{_MARKERS}"
    fs.invalidate_cache(path)
    try:
        fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass


def _remove_partial_writes(fs: fsspec.AbstractFileSystem, root: str) -> None:
    """Delete the temporary files of a killed local write (object stores leave none)."""
    if not isinstance(fs, LocalFileSystem):
        return
    for path in fs.find(root):
        if _PARTIAL.search(path):
            fs.rm_file(path)


def _encoded(ds: xr.Dataset, name: str) -> xr.Variable:
    """A variable as xarray stores it in Zarr v3: CF-encoded, booleans kept (v3 has them;
    CF encoding would make them int8)."""
    var = ds[name].variable
    return var if var.dtype == bool else encode_cf_variable(var, name=name)


def _incompatibilities(group: zarr.Group, ds: xr.Dataset) -> list[str]:
    """What differs between the store's layout and the one ``ds`` would be written with."""
    problems = []
    for name in _regional(ds):
        var = _encoded(ds, name)
        try:
            arr = group[name]
        except KeyError:
            problems.append(f"no variable {name!r}")
            continue
        if not isinstance(arr, zarr.Array):
            problems.append(f"{name!r} is a group in the store")
            continue
        assert var.chunks is not None, "_prepare chunks every regional variable"
        shards = tuple(c[0] for c in var.chunks)
        # Zarr v2 metadata has no dimension names (to_zarr writes v3).
        dim_names = getattr(arr.metadata, "dimension_names", None)
        found = (tuple(dim_names or ()), arr.shape, arr.shards, arr.dtype)
        wanted = (var.dims, var.shape, shards, var.dtype)
        if found != wanted:
            problems.append(
                f"{name!r} is (dims, shape, shards, dtype) {found} in the store, {wanted} here"
            )
    with _quiet_zarr():
        stored = set(group.array_keys())
    extra = stored - set(ds.variables)
    if extra:
        problems.append(f"the store also holds {sorted(extra)}")
    for dim in _REGION_DIMS:
        if dim in ds.indexes and dim in stored:
            if not np.array_equal(np.asarray(_array(group, dim)[...]), ds[dim].values):
                problems.append(f"the {dim} coordinates differ")
    return problems


class _RegionWriter:
    """Writes one region of every regional variable, then its done-marker.

    One instance enters the graph once (shared by every region task): the zarr arrays
    and the filesystem are picklable, so it also works on distributed workers.
    """

    def __init__(
        self,
        arrays: dict[str, zarr.Array],
        dims: dict[str, tuple[Hashable, ...]],
        bounds: dict[str, tuple[int, ...]],
        fs: fsspec.AbstractFileSystem,
        root: str,
    ) -> None:
        self.arrays = arrays
        self.dims = dims
        self.bounds = bounds  # chunk boundaries along each region dimension
        self.fs = fs
        self.root = root

    def __call__(self, region: tuple[int, ...], *blocks: np.ndarray) -> None:
        where: dict[Hashable, slice] = {
            d: slice(self.bounds[d][i], self.bounds[d][i + 1])
            for d, i in zip(_REGION_DIMS, region, strict=True)
        }
        for (name, arr), block in zip(self.arrays.items(), blocks, strict=True):
            arr[tuple(where.get(d, slice(None)) for d in self.dims[name])] = block
        # Only now is the region complete: a PUT is atomic, even on object stores.
        self.fs.pipe_file(f"{self.root}/{_DONE}/{_marker_name(region)}", b"")


def _finalise(store: Any, fs: fsspec.AbstractFileSystem, root: str, *_: None) -> None:
    """Consolidate (the store is complete from here on), then drop the markers."""
    with _quiet_zarr():
        zarr.consolidate_metadata(store)
    _clear_markers(fs, root)


def _write_regions(
    ds: xr.Dataset,
    store: str,
    storage_options: dict[str, Any] | None,
    fs: fsspec.AbstractFileSystem,
    root: str,
    done: set[str],
) -> Delayed:
    """A Delayed writing every region not in ``done``, then consolidating."""
    names = _regional(ds)
    group = zarr.open_group(
        store, mode="r+", use_consolidated=False, **_zarr_kwargs(storage_options)
    )
    bounds = {d: tuple(np.cumsum((0, *ds.chunks[d])).tolist()) for d in _REGION_DIMS}
    writer = _RegionWriter(
        {n: _array(group, n) for n in names}, {n: ds[n].dims for n in names}, bounds, fs, root
    )
    # A fixed name instead of a token: hashing zarr arrays and filesystems is slow, and
    # the writer must be one graph key whatever the number of regions.
    shared = dask.delayed(writer, name=f"xharmonise-writer-{uuid.uuid4().hex}", traverse=False)
    blocks = {}
    for n in names:
        var = _encoded(ds, n)
        stored = writer.arrays[n].dtype
        if var.dtype != stored:
            raise TypeError(f"{n!r} encodes to {var.dtype}, the store holds {stored}")
        # Unoptimised: variables cut from one computation (prediction and variance) keep
        # sharing its tasks, so the merged graph runs it once per region.
        blocks[n] = (var.dims, var.data.to_delayed(optimize_graph=False))
    # Local filesystems need the directory before the first marker goes in.
    fs.makedirs(f"{root}/{_DONE}", exist_ok=True)
    tasks = []
    for region in _regions(ds):
        if _marker_name(region) in done:
            continue
        at: dict[Hashable, int] = dict(zip(_REGION_DIMS, region, strict=True))
        args = [b[tuple(at.get(d, 0) for d in dims)] for dims, b in blocks.values()]
        tasks.append(shared(region, *args))
    return dask.delayed(_finalise)(group.store, fs, root, *tasks)


#: The compressors :func:`to_zarr` offers, and their levels (zstd's negative ones trade
#: ratio for speed; lz4's are Blosc's).
COMPRESSORS: dict[str, tuple[int, int]] = {"zstd": (-131072, 22), "lz4": (0, 9)}
_ZSTD_DEFAULT = 1
_LZ4_DEFAULT = 5


def _check_arguments(
    ds: Any,
    store: Any,
    *,
    mode: Any,
    resume: Any,
    storage_options: Any,
    inner_chunks: Any,
    compressor: Any,
    compression_level: Any,
    compute: Any,
    progress: Any,
) -> str:
    """Every argument of :func:`to_zarr`, checked before anything is written; the store
    as a string."""
    if not isinstance(ds, xr.Dataset):
        fix = (
            "da.to_dataset(name='prediction')"
            if isinstance(ds, xr.DataArray)
            else "xharmonise.predict(...)'s output"
        )
        raise InputTypeError(f"ds is a {checks.type_name(ds)}: pass an xarray.Dataset, e.g. {fix}")
    for name, var in ds.variables.items():
        if not isinstance(name, str):
            raise InputTypeError(
                f"the dataset has a variable named {name!r}: Zarr names are strings, rename "
                f"it with ds.rename({{{name!r}: {str(name)!r}}})"
            )
        _check_attrs(var.attrs, f"variable {name!r}")
    _check_attrs(ds.attrs, "the dataset")
    if not any({"y", "x"} <= set(v.dims) for v in ds.data_vars.values()):
        raise InputValueError(
            f"the dataset has no (y, x) variable (its variables: {dict(ds.sizes)} sizes): "
            "to_zarr writes rasters, e.g. xharmonise.predict's output; write other data with "
            "ds.to_zarr"
        )
    empty = [str(d) for d, n in ds.sizes.items() if n == 0]
    if empty:
        raise InputValueError(
            f"the dataset has no pixels along {', '.join(empty)}: give a non-empty Dataset "
            "(check the selection that cut it)"
        )
    if not isinstance(store, str | os.PathLike):
        raise InputTypeError(
            f"store={store!r} is a {checks.type_name(store)}: give a local path or an fsspec "
            "URL (e.g. 's3://bucket/out.zarr')"
        )
    path = os.fspath(store)
    if not isinstance(path, str) or not path.strip() or "\x00" in path:
        raise InputValueError(
            f"store={store!r} is not a path: give a local path or an fsspec URL (e.g. "
            "'s3://bucket/out.zarr')"
        )
    checks.choice(mode, "mode", ("w-", "w"))
    checks.flag(resume, "resume")
    if resume and mode == "w":
        raise InputValueError(
            "resume=True completes the existing store, mode='w' replaces it: give one of them"
        )
    if storage_options is not None and not isinstance(storage_options, dict):
        raise InputTypeError(
            f"storage_options={storage_options!r} is a {checks.type_name(storage_options)}: "
            "give a dict of fsspec options (e.g. {'anon': True}) or None"
        )
    if storage_options and "://" not in path:
        raise InputValueError(
            f"storage_options= apply to fsspec URLs, and {path} is a local path: drop them, "
            "or give a URL such as 's3://bucket/out.zarr'"
        )
    checks.integer(inner_chunks, "inner_chunks", minimum=1)
    checks.choice(compressor, "compressor", tuple(COMPRESSORS))
    if compression_level is not None:
        low, high = COMPRESSORS[compressor]
        checks.integer(compression_level, "compression_level", minimum=low, maximum=high)
    checks.flag(compute, "compute")
    checks.flag(progress, "progress")
    if "://" not in path and os.path.isfile(path):
        raise StoreExistsError(
            f"{path} is a file, not a Zarr store: choose another path, or remove the file first"
        )
    return path


def _check_attrs(attrs: dict[Hashable, Any], what: str) -> None:
    """Attributes Zarr's JSON metadata can hold; others are refused by name."""
    for key, value in attrs.items():
        if not isinstance(key, str) or not _storable(value, top=True):
            raise InputTypeError(
                f"{what} has attribute {key!r} = {value!r} ({checks.type_name(value)}), which "
                "Zarr metadata cannot hold: convert it to a string, number or list, or drop it"
            )


def _storable(value: Any, *, top: bool = False) -> bool:
    if value is None or isinstance(value, str | bool | int | float):
        return True
    if top and isinstance(value, np.ndarray | np.generic):
        # xarray turns top-level NumPy numbers and arrays into JSON numbers and lists.
        return value.dtype.kind in "biuf"
    if isinstance(value, list | tuple):
        return all(_storable(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str | int) and _storable(v) for k, v in value.items())
    return False


def to_zarr(
    ds: xr.Dataset,
    store: str | os.PathLike[str],
    *,
    mode: Literal["w-", "w"] = "w-",
    resume: bool = False,
    storage_options: dict[str, Any] | None = None,
    inner_chunks: int = _DEFAULT_INNER,
    compressor: Literal["zstd", "lz4"] = "zstd",
    compression_level: int | None = None,
    compute: bool = True,
    progress: bool = True,
) -> Any:
    """Write a Dataset to a sharded, compressed (zstd or lz4), consolidated Zarr v3 store.

    Each Dask chunk becomes one Zarr shard, so parallel writers never touch the same
    object; inside a shard, ``inner_chunks``-pixel chunks keep small reads cheap. The
    ``spatial_ref`` grid mapping is written CF-style so rioxarray and GDAL read the CRS
    and transform back.

    The write is resumable: every shard-aligned region (one chunk along ``y`` and ``x``)
    is recorded as done in the store (``.xharmonise/done/``) once its data is written, and
    the metadata is consolidated only when all regions are done. ``resume=True`` completes
    an interrupted write, writing only the regions not yet done.

    Parameters
    ----------
    ds : xarray.Dataset
        Typically the output of :func:`xharmonise.predict` (lazy or in memory).
    store : str or os.PathLike
        Local path or any fsspec URL (``s3://…``, ``memory://…``).
    mode : {"w-", "w"}
        ``"w-"`` refuses an existing store; ``"w"`` replaces it.
    resume : bool
        Complete an interrupted write of the same ``ds`` (same variables, shapes, chunks
        and coordinates) instead of refusing the existing store. A missing store is
        written from scratch; a complete one is left as is. Not with ``mode="w"``.
    storage_options : dict, optional
        fsspec options for remote stores (e.g. ``{"client_kwargs": {"endpoint_url": …}}``).
    inner_chunks : int
        Side of the inner chunks, in pixels (the largest divisor of the shard side not
        above it). The default, 512, writes 25-40 % faster than 256 (zarr's cost per
        chunk outweighs zstd's) for reads of 1 MB per band and chunk.
    compressor : {"zstd", "lz4"}
        ``"zstd"`` (the default) for the smaller store, ``"lz4"`` (Blosc's lz4 after a byte
        shuffle) for speed: on the demo's harmonised BCNet output (prediction and
        variance, 256² chunks, one thread) zstd level 1 compresses 1.53x at 420 MB/s and
        decodes at 820 MB/s, lz4 1.35x at 1000 MB/s and 1780 MB/s. At 32 bytes a pixel,
        zstd's encoding is about 6 % of the CalibNet kernel's time, lz4's about 2.5 %.
    compression_level : int, optional
        zstd's level, from -131072 (fastest) to 22 (smallest), by default 1: where
        harmonised float32 reflectances stop gaining (on a simulated scene's prediction
        and variance level 3 gives a 1.63 ratio, level 1 1.62 at a 25-40 % faster write,
        negative levels 1.43 or less). For lz4, Blosc's level, 0 to 9, by default 5.
    compute : bool
        Write the data now (True) or return the delayed write; the metadata is written
        either way.
    progress : bool
        Show a progress bar on stderr while writing (``compute=True`` only): Dask's
        ``ProgressBar`` on local schedulers, ``distributed.progress`` when the active
        scheduler is a ``distributed`` client. On by default, like :func:`xharmonise.fit`'s:
        both are long operations one wants to watch; False prints nothing.

    Returns
    -------
    None or dask.delayed.Delayed

    Raises
    ------
    StoreExistsError
        The store exists and neither ``mode="w"`` nor ``resume=True`` was given, or
        ``resume=True`` found a store of another layout, or the path is a file.
    InputTypeError, InputValueError
        An argument of the wrong type or beyond its limits (checked before anything is
        written).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> ds = xr.Dataset({"prediction": (("band", "y", "x"), np.zeros((1, 4, 4), "f4"))})
    >>> to_zarr(ds, "memory://doc-example.zarr")
    """
    store = _check_arguments(
        ds,
        store,
        mode=mode,
        resume=resume,
        storage_options=storage_options,
        inner_chunks=inner_chunks,
        compressor=compressor,
        compression_level=compression_level,
        compute=compute,
        progress=progress,
    )
    ds, encoding = _prepare(ds, inner_chunks, compressor, compression_level)
    exists = _store_exists(store, storage_options)
    if exists and not resume and mode == "w-":
        raise StoreExistsError(
            f"{store} exists: choose another path, pass mode='w' to replace it, or "
            "resume=True to complete an interrupted write of the same data"
        )
    fs, root = fsspec.core.url_to_fs(store, **(storage_options or {}))
    root = root.rstrip("/")
    done: set[str] = set()
    if resume and exists:
        group = zarr.open_group(store, mode="r", **_zarr_kwargs(storage_options))
        problems = _incompatibilities(group, ds)
        if problems:
            raise StoreExistsError(
                f"{store} holds another layout ({'; '.join(problems)}): resume=True only "
                "completes a write of the same data with the same chunks; pass mode='w' "
                "to replace the store, or choose another path"
            )
        _remove_partial_writes(fs, root)
        if group.metadata.consolidated_metadata is not None:
            # Complete already (a crash may have left markers behind).
            _clear_markers(fs, root)
            return dask.delayed(None) if not compute else None
        done = _done_regions(fs, root)
    else:
        # Markers of an older, replaced store must not count for this one.
        _clear_markers(fs, root)
        with _quiet_zarr():
            # Metadata and loaded variables now; the returned delayed data write is
            # replaced by the region tasks below.
            ds.to_zarr(
                store,
                mode=mode,
                zarr_format=3,
                consolidated=False,
                encoding=encoding,
                compute=False,
                **_zarr_kwargs(storage_options),
            )
    delayed = _write_regions(ds, store, storage_options, fs, root, done)
    if not compute:
        return delayed
    if progress:
        _compute_with_progress(delayed)
    else:
        delayed.compute()
    return None


def _active_client() -> Any:
    """The ``distributed`` client that ``compute()`` would use now, or None."""
    try:
        from distributed import default_client

        client = default_client()
    except (ImportError, ValueError):
        return None
    # A client may exist while dask.config picks another scheduler (e.g. "threads").
    return client if get_scheduler() == client.get else None


def _compute_with_progress(delayed: Delayed) -> None:
    client = _active_client()
    if client is None:
        from dask.diagnostics import ProgressBar

        # stderr: stdout stays for results that scripts may parse.
        with ProgressBar(out=sys.stderr):
            delayed.compute()
        return
    from distributed import progress

    future = client.compute(delayed)
    # The local ProgressBar sees no tasks run on a cluster; this one follows the
    # scheduler's task states and returns once the write is finished (or failed). It
    # prints to stdout: send it to stderr like the local one.
    with redirect_stdout(sys.stderr):
        progress(future, notebook=False)
    future.result()


@dataclass
class StoreInfo:
    """What a store written by :func:`to_zarr` holds, from its metadata only.

    Attributes
    ----------
    store : str
        The path or URL given.
    complete : bool
        Whether every region was written (the metadata is consolidated).
    regions_done, regions_total : int
        Shard-aligned regions written so far, and in all (equal when complete).
    variables : dict
        Per regional variable: ``dims``, ``shape``, ``dtype``, ``chunks`` (inner) and
        ``shards``.
    sizes : dict
        Dimension sizes.
    crs : str or None
        The CRS (``EPSG:…`` when it has a code, WKT otherwise) read back by rioxarray.
    transform : tuple of float or None
        Affine ``(a, b, c, d, e, f)`` of the pixel grid.
    bands : list of str
        Labels of the ``band`` coordinate.
    attrs : dict
        The Dataset attributes (method, band pairing, provenance).
    """

    store: str
    complete: bool
    regions_done: int
    regions_total: int
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    crs: str | None = None
    transform: tuple[float, ...] | None = None
    bands: list[str] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)


def describe(
    store: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None
) -> StoreInfo:
    """Describe a store written by :func:`to_zarr`, complete or interrupted.

    Only metadata and coordinates are read, so this is cheap on remote stores.

    Parameters
    ----------
    store : str or os.PathLike
        Local path or fsspec URL.
    storage_options : dict, optional
        fsspec options for remote stores.

    Returns
    -------
    StoreInfo

    Raises
    ------
    FileNotFoundError
        Nothing readable as a Zarr group at ``store``.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> ds = xr.Dataset({"prediction": (("band", "y", "x"), np.zeros((1, 4, 4), "f4"))})
    >>> to_zarr(ds, "memory://doc-describe.zarr")
    >>> info = describe("memory://doc-describe.zarr")
    >>> info.complete, info.variables["prediction"]["shape"]
    (True, (1, 4, 4))
    """
    import rioxarray  # noqa: F401  (registers .rio, which reads the CF grid mapping)

    store = os.fspath(store)
    kwargs = _zarr_kwargs(storage_options)
    try:
        group = zarr.open_group(store, mode="r", **kwargs)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError) as err:
        raise FileNotFoundError(f"no Zarr store at {store}") from err
    complete = group.metadata.consolidated_metadata is not None
    with _quiet_zarr():
        ds = xr.open_zarr(store, consolidated=complete, **kwargs)
        arrays = {name: _array(group, name) for name in ds.data_vars}
    variables: dict[str, dict[str, Any]] = {}
    total = 0
    for name, var in ds.data_vars.items():
        arr = arrays[name]
        shards = arr.shards or arr.chunks
        variables[name] = {
            "dims": var.dims,
            "shape": var.shape,
            "dtype": str(var.dtype),
            "chunks": arr.chunks,
            "shards": shards,
        }
        if set(_REGION_DIMS) <= set(var.dims) and not total:
            total = int(
                np.prod([-(-var.sizes[d] // shards[var.dims.index(d)]) for d in _REGION_DIMS])
            )
    if complete:
        done = total
    else:
        fs, root = fsspec.core.url_to_fs(store, **(storage_options or {}))
        done = len(_done_regions(fs, root.rstrip("/")))
    crs = ds.rio.crs
    transform = None
    if {"x", "y"} <= set(ds.dims):
        transform = tuple(float(v) for v in ds.rio.transform())[:6]
    return StoreInfo(
        store=store,
        complete=complete,
        regions_done=done,
        regions_total=total,
        variables=variables,
        sizes={str(k): int(v) for k, v in ds.sizes.items()},
        crs=None if crs is None else (crs.to_string()),
        transform=transform,
        bands=[str(b) for b in ds["band"].values] if "band" in ds.coords else [],
        attrs=dict(ds.attrs),
    )
