"""Sentinel-2 MTF, Gaussian point-spread kernels and lazy blur + k-fold aggregation.

The reference sensor sees the surface through its modulation transfer function (MTF).
We model it as a Gaussian whose response at the reference Nyquist frequency equals the
published MTF value, so degrading the high-resolution source with it (and sampling one
value per reference pixel) simulates what the reference would have measured.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import dask.array as da
import numpy as np
import xarray as xr

__all__ = [
    "DEFAULT_MTF",
    "S2_ALIASES",
    "S2_MTF",
    "degrade",
    "degrade_array",
    "degrade_contributions",
    "gaussian_kernel",
    "kernel_margin",
    "nyquist_response",
    "reference_sigmas",
    "s2_band",
    "sigma_from_mtf",
]

#: Sentinel-2 MTF at Nyquist per band (ESA S2 MSI image quality figures used by the paper).
S2_MTF: dict[str, float] = {
    "B1": 0.30,
    "B2": 0.304,
    "B3": 0.276,
    "B4": 0.233,
    "B5": 0.343,
    "B6": 0.336,
    "B7": 0.328,
    "B8": 0.222,
    "B8A": 0.315,
    "B9": 0.323,
    "B11": 0.239,
    "B12": 0.183,
}


#: Sentinel-2 band names that are not ``B<n>``: the common names of Earth Search's
#: collections (odc-stac, stackstac), upper-cased.
S2_ALIASES: dict[str, str] = {
    "COASTAL": "B1",
    "BLUE": "B2",
    "GREEN": "B3",
    "RED": "B4",
    "REDEDGE1": "B5",
    "REDEDGE2": "B6",
    "REDEDGE3": "B7",
    "NIR": "B8",
    "NIR08": "B8A",
    "NIR09": "B9",
    "SWIR16": "B11",
    "SWIR22": "B12",
}
# B2, B02, B8A, B08A, and Theia's file prefixes (SRE_B2, FRE_B8A).
_S2_ID = re.compile(r"^(?:[A-Z]+_)?B0?(\d{1,2}A?)$")


def s2_band(name: object) -> str | None:
    """The Sentinel-2 band a band name stands for (``"B2"``... ``"B8A"``), or None.

    Examples
    --------
    >>> [s2_band(n) for n in ("B02", "b8a", "blue", "nir08", "FRE_B4", "B10", "pan", 1)]
    ['B2', 'B8A', 'B2', 'B8A', 'B4', None, None, None]
    """
    key = str(name).strip().upper()
    if key in S2_ALIASES:
        return S2_ALIASES[key]
    found = _S2_ID.match(key)
    band = f"B{found.group(1)}" if found else None
    return band if band in S2_MTF else None


def sigma_from_mtf(mtf: float, ref_resolution: float, src_resolution: float) -> float:
    """Gaussian standard deviation, in source pixels, whose MTF at Nyquist is ``mtf``.

    Parameters
    ----------
    mtf : float
        MTF value at the reference Nyquist frequency, in (0, 1).
    ref_resolution, src_resolution : float
        Pixel sizes of the reference and of the source, in the same unit.

    Returns
    -------
    float
        ``sigma = (ref_resolution / pi) * sqrt(-2 ln mtf) / src_resolution``.

    Examples
    --------
    >>> round(sigma_from_mtf(0.304, 10.0, 2.0), 2)
    2.46
    """
    if not 0.0 < mtf < 1.0:
        raise ValueError(f"MTF must be in (0, 1), got {mtf}")
    return ref_resolution / math.pi * math.sqrt(-2.0 * math.log(mtf)) / src_resolution


#: MTF at Nyquist assumed for reference bands whose name is not a Sentinel-2 band: close to
#: the mean of the 10 m bands, the closest guess for an unknown ~10 m sensor.
DEFAULT_MTF: float = 0.26


def reference_sigmas(bands: Sequence[str], factor: int) -> list[float]:
    """Per-band Gaussian sigma, in source pixels, of the reference MTF for ``bands``.

    Sentinel-2 band names in any spelling :func:`s2_band` knows (``B4``, ``B04``,
    ``red``...) take their MTF from :data:`S2_MTF`, others :data:`DEFAULT_MTF`; only the
    resolution ratio ``factor`` matters.

    Examples
    --------
    >>> [round(s, 2) for s in reference_sigmas(["B4", "B08", "nir", "pan"], 5)]
    [2.72, 2.76, 2.76, 2.61]
    """
    res = 10.0
    mtfs = [S2_MTF.get(s2_band(b) or "", DEFAULT_MTF) for b in bands]
    return [sigma_from_mtf(mtf, res, res / factor) for mtf in mtfs]


def kernel_margin(sigma: float, factor: int, extra: int = 0) -> int:
    """Source pixels a kernel must reach beyond its k x k footprint to cover +-3 sigma.

    ``extra`` widens it further (BCNet uses it so that its learnable filter can move).

    Examples
    --------
    >>> kernel_margin(2.76, 5), kernel_margin(2.76, 5, extra=2)  # S2 B8 at 2 m
    (6, 8)
    """
    return max(0, math.ceil(3.0 * sigma - factor / 2.0)) + int(extra)


def gaussian_kernel(sigma: float, factor: int, margin: int) -> np.ndarray:
    """Normalised 2-D Gaussian kernel of side ``factor + 2 * margin`` source pixels.

    The kernel is centred on the centre of a ``factor x factor`` block, so sliding it
    with stride ``factor`` over a source padded by ``margin`` yields one value per
    reference pixel, centred on that pixel.

    Parameters
    ----------
    sigma : float
        Standard deviation in source pixels.
    factor : int
        Integer resolution ratio between reference and source.
    margin : int
        Source pixels on each side beyond the block.

    Returns
    -------
    numpy.ndarray
        float64 array of shape (K, K), summing to 1.

    Examples
    --------
    >>> k = gaussian_kernel(2.5, 5, 6)
    >>> k.shape, round(float(k.sum()), 6)
    ((17, 17), 1.0)
    """
    size = factor + 2 * margin
    offsets = np.arange(size) - (size - 1) / 2.0
    g = np.exp(-0.5 * (offsets / sigma) ** 2)
    g /= g.sum()
    return np.outer(g, g)


def nyquist_response(kernel: np.ndarray, factor: int) -> float:
    """Frequency response of a separable kernel at the reference Nyquist frequency.

    Evaluated along x on the kernel's marginal: the reference Nyquist frequency is
    ``1 / (2 * factor)`` cycles per source pixel.

    Examples
    --------
    >>> sigma = sigma_from_mtf(0.222, 10.0, 2.0)  # S2 B8 seen from 2 m
    >>> kernel = gaussian_kernel(sigma, 5, kernel_margin(sigma, 5))
    >>> round(nyquist_response(kernel, 5), 2)
    0.22
    """
    g = kernel.sum(axis=0)
    offsets = np.arange(g.size) - (g.size - 1) / 2.0
    return float(np.sum(g * np.cos(2.0 * np.pi * offsets / (2.0 * factor))))


def _strided_correlate(block: np.ndarray, g: np.ndarray, factor: int, axis: int) -> np.ndarray:
    # Each output sample is the dot product of g with the window starting at
    # factor * j: a strided "valid" correlation that never computes the discarded samples.
    windows = np.lib.stride_tricks.sliding_window_view(block, g.size, axis=axis)
    windows = np.take(windows, np.arange(0, windows.shape[axis], factor), axis=axis)
    return np.tensordot(windows, g, axes=([-1], [0]))


def _degrade_block(block: np.ndarray, kernels_1d: np.ndarray, factor: int) -> np.ndarray:
    out = []
    for b in range(block.shape[0]):
        g = kernels_1d[b]
        tmp = _strided_correlate(block[b], g, factor, axis=0)
        out.append(_strided_correlate(tmp, g, factor, axis=1))
    return np.stack(out).astype(block.dtype, copy=False)


def _kernels_1d(sigmas: Sequence[float], factor: int, margin: int) -> np.ndarray:
    return np.stack([gaussian_kernel(s, factor, margin).sum(axis=0) for s in sigmas])


def degrade_array(
    data: np.ndarray | da.Array, sigmas: Sequence[float], factor: int
) -> np.ndarray | da.Array:
    """Blur (band, y, x) data with per-band Gaussians and sample one value per k x k block.

    Output pixel ``(j, i)`` is centred on source block ``[k*j, k*j+k) x [k*i, k*i+k)``.
    Blocks whose kernel window reaches outside the array or touches a NaN are NaN, so
    validity is explicit rather than guessed from padding.

    Parameters
    ----------
    data : numpy.ndarray or dask.array.Array
        Array (band, y, x) whose y and x sizes are multiples of ``factor``.
    sigmas : sequence of float
        Per-band Gaussian standard deviation in source pixels.
    factor : int
        Aggregation factor.

    Returns
    -------
    numpy.ndarray or dask.array.Array
        Array (band, y // factor, x // factor), same kind as ``data``; a Dask input
        stays lazy and its result equals the NumPy result exactly at chunk seams.

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> x = np.random.default_rng(0).random((1, 60, 60)).astype("float32")
    >>> out = degrade_array(x, [2.5], 5)
    >>> out.shape, int(np.isfinite(out).sum())  # the border blocks' kernels stick out
    ((1, 12, 12), 100)
    >>> lazy = degrade_array(da.from_array(x, chunks=(1, 30, 30)), [2.5], 5)
    >>> np.array_equal(lazy.compute(), out, equal_nan=True)
    True
    """
    nb, ny, nx = data.shape
    if ny % factor or nx % factor:
        raise ValueError(f"y and x sizes {ny, nx} must be multiples of the factor {factor}")
    if len(sigmas) != nb:
        raise ValueError(f"{len(sigmas)} sigmas for {nb} bands")
    margin = max(kernel_margin(s, factor) for s in sigmas)
    kernels = _kernels_1d(sigmas, factor, margin)
    dtype = np.result_type(data.dtype, np.float32)

    if not isinstance(data, da.Array):
        padded = np.pad(
            data.astype(dtype, copy=False),
            ((0, 0), (margin, margin), (margin, margin)),
            constant_values=np.nan,
        )
        return _degrade_block(padded, kernels, factor)

    # Chunks must start on block boundaries so every output sample lands in one chunk.
    ychunks = _align_chunks(data.chunks[1], factor, margin)
    xchunks = _align_chunks(data.chunks[2], factor, margin)
    data = data.astype(dtype).rechunk((nb, ychunks, xchunks))
    out_chunks = ((nb,), tuple(c // factor for c in ychunks), tuple(c // factor for c in xchunks))
    return da.map_overlap(
        _degrade_block,
        data,
        depth={0: 0, 1: margin, 2: margin},
        boundary={1: np.nan, 2: np.nan},
        trim=False,
        chunks=out_chunks,
        dtype=dtype,
        meta=np.empty((0, 0, 0), dtype=dtype),
        allow_rechunk=False,
        kernels_1d=kernels,
        factor=factor,
    )


def _align_chunks(chunks: tuple[int, ...], factor: int, margin: int) -> tuple[int, ...]:
    total = sum(chunks)
    target = max(factor, (max(chunks) // factor) * factor, -(-margin // factor) * factor)
    aligned = [target] * (total // target)
    rest = total % target
    if rest and aligned and rest < margin:
        # map_overlap needs every chunk at least as deep as the halo: merge the remainder.
        aligned[-1] += rest
    elif rest:
        aligned.append(rest)
    return tuple(aligned)


def degrade_contributions(
    data: da.Array, sigmas: Sequence[float], factor: int
) -> tuple[da.Array, Callable[[np.ndarray], np.ndarray]]:
    """The degradation as independent per-chunk contributions, and how to sum them.

    :func:`degrade_array` on Dask needs each chunk's neighbours (a halo), and Dask then
    tends to hold many full-resolution chunks at once. Because the blur is linear, each
    chunk can instead produce, alone, its contribution to every reference pixel whose
    kernel reaches it (zero outside the chunk, NaN outside the image); summing the small
    overlapping contributions gives the same result. Memory then stays at a few chunks
    plus ``1 / factor**2`` of the source.

    Parameters
    ----------
    data : dask.array.Array
        (band, y, x) source, sizes multiples of ``factor``.
    sigmas : sequence of float
        Per-band Gaussian sigma, source pixels.
    factor : int
        Aggregation factor.

    Returns
    -------
    (dask.array.Array, callable)
        The contributions (one block per chunk, each ``2 * ring`` reference pixels larger
        than its share), and a function turning their computed value into the
        (band, y // factor, x // factor) result, equal to :func:`degrade_array`'s up to
        float rounding.

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> x = np.random.default_rng(0).random((1, 60, 60)).astype("float32")
    >>> parts, assemble = degrade_contributions(da.from_array(x, chunks=(1, 30, 30)), [2.5], 5)
    >>> out = assemble(parts.compute())
    >>> np.allclose(out, degrade_array(x, [2.5], 5), atol=1e-6, equal_nan=True)
    True
    """
    nb, ny, nx = data.shape
    if ny % factor or nx % factor:
        raise ValueError(f"y and x sizes {ny, nx} must be multiples of the factor {factor}")
    margin = max(kernel_margin(s, factor) for s in sigmas)
    ring = -(-margin // factor)
    pad = ring * factor + margin
    kernels = _kernels_1d(sigmas, factor, margin)
    dtype = np.result_type(data.dtype, np.float32)
    ychunks = _align_chunks(data.chunks[1], factor, 0)
    xchunks = _align_chunks(data.chunks[2], factor, 0)
    data = data.astype(dtype).rechunk((nb, ychunks, xchunks))

    def contribution(block: np.ndarray, block_info=None) -> np.ndarray:
        (r0, r1), (c0, c1) = block_info[0]["array-location"][1:]
        # Zero where a neighbouring chunk will contribute, NaN beyond the image edge.
        padded = np.zeros((nb, r1 - r0 + 2 * pad, c1 - c0 + 2 * pad), dtype)
        if r0 == 0:
            padded[:, :pad] = np.nan
        if r1 == ny:
            padded[:, -pad:] = np.nan
        if c0 == 0:
            padded[:, :, :pad] = np.nan
        if c1 == nx:
            padded[:, :, -pad:] = np.nan
        padded[:, pad:-pad, pad:-pad] = block
        return _degrade_block(padded, kernels, factor)

    out_chunks = (
        (nb,),
        tuple(c // factor + 2 * ring for c in ychunks),
        tuple(c // factor + 2 * ring for c in xchunks),
    )
    contributions = da.map_blocks(
        contribution, data, chunks=out_chunks, dtype=dtype, meta=np.empty((0, 0, 0), dtype)
    )

    def assemble(values: np.ndarray) -> np.ndarray:
        out = np.zeros((nb, ny // factor + 2 * ring, nx // factor + 2 * ring), dtype)
        yo = np.cumsum((0, *out_chunks[1]))
        xo = np.cumsum((0, *out_chunks[2]))
        ys = np.cumsum((0, *ychunks)) // factor
        xs = np.cumsum((0, *xchunks)) // factor
        for i in range(len(ychunks)):
            for j in range(len(xchunks)):
                part = values[:, yo[i] : yo[i + 1], xo[j] : xo[j + 1]]
                out[:, ys[i] : ys[i] + part.shape[1], xs[j] : xs[j] + part.shape[2]] += part
        return out[:, ring : out.shape[1] - ring, ring : out.shape[2] - ring]

    return contributions, assemble


def degrade(src: xr.DataArray, sigmas: Sequence[float], factor: int) -> xr.DataArray:
    """Degrade a georeferenced (band, y, x) DataArray to the reference resolution.

    Parameters
    ----------
    src : xarray.DataArray
        Source on a grid in phase with the reference grid, sizes multiples of ``factor``.
    sigmas : sequence of float
        Per-band Gaussian standard deviation in source pixels.
    factor : int
        Integer resolution ratio.

    Returns
    -------
    xarray.DataArray
        Lazy when ``src`` is Dask-backed; coordinates are the block centres and the
        CRS is kept.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> x = xr.DataArray(np.ones((1, 10, 10)), dims=("band", "y", "x"),
    ...                  coords={"y": np.arange(10) + 0.5, "x": np.arange(10) + 0.5})
    >>> degrade(x, [1.0], 5).shape
    (1, 2, 2)
    """
    out = degrade_array(src.data, sigmas, factor)
    coords = {"band": src["band"]} if "band" in src.coords else {}
    for dim in ("y", "x"):
        c = src[dim].values
        coords[dim] = c.reshape(-1, factor).mean(axis=1)
    result = xr.DataArray(out, dims=src.dims, coords=coords, attrs=dict(src.attrs))
    if "spatial_ref" in src.coords:
        result = result.assign_coords(spatial_ref=src["spatial_ref"])
    return result
