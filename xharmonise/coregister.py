"""Sub-pixel co-registration: how far the source content sits from where the reference sees it.

Sign convention
---------------
The shift is the displacement of the source content relative to the reference, in CRS
units (metres), east and north positive: a feature the reference sees at world position
``p`` appears in the source at ``p + (east, north)``. Correcting the source means moving
its georeferencing by ``-(east, north)``. The same convention holds for
:attr:`xharmonise.simulate.Truth.shift` and for BCNet's filter-centroid shift.

Method
------
The overlap is cut into square windows of reference pixels. In each window the source is
blurred with the reference MTF at its own resolution and sampled once per reference pixel,
and scikit-image's phase correlation measures how far that degraded source sits from the
reference. Phase correlation on aggregated images under-reads sub-pixel shifts (aliasing
bends the phase of the high frequencies), so the estimate is refined: the blurred source
is resampled (cubic spline, at the source resolution) at the positions the current
estimate says the reference sees, and the residual shift is measured again, until it
vanishes. At that fixed point the two images agree up to noise, so the bias of the
correlation no longer matters. Windows with no-data or cloud are skipped, the rest are
combined robustly (median, then the mean of the windows that agree with it).

Only the windows examined are read from the source, a few at a time and each chunk once per
round: a Dask-backed source is never loaded whole.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from itertools import product
from typing import Any

import dask
import numpy as np
import pandas as pd
import xarray as xr
from scipy import fft, ndimage

from xharmonise import psf
from xharmonise.errors import CoregistrationError
from xharmonise.records import ShiftEstimate

__all__ = ["ShiftEstimate", "estimate_on_grid"]

# Peak refinement of skimage's matrix-multiply DFT: steps of 1/20 reference pixel while
# far from the fixed point, then 1/100 (ten times below the 0.1 pixel we promise); the
# per-band estimates, which only serve as a report, stay at 1/20.
_UPSAMPLE_COARSE = 20
_UPSAMPLE = 100
# Largest share of a window that may be masked (no-data, cloud): enough texture remains to
# correlate, and the mask is applied to both images alike so it adds no bias at the fixed
# point.
_MAX_MASKED = 0.5
# Fixed-point iterations per window (plus one at the fine peak resolution at least); the
# correlation's bias is a fraction of the residual, so each iteration divides the error
# several times over and 3-4 suffice.
_MAX_ITER = 6
# Windows whose estimate lies this close to the result always count as agreeing (reference
# pixels): below it the spread is noise, not an outlier.
_MIN_TOLERANCE = 0.1
# Windows examined per round. Their reference windows are read at once (cheap: reference
# resolution); their source windows are read together too, so that a chunk shared by
# several windows is read (or, for a lazy source, computed) once, within _READ_BUDGET.
# Every round reads (or recomputes) chunks again, so rounds are few: half the default
# max_windows, whose source windows take a few MB each.
_BATCH = 32
# Most source chunk bytes one read may touch; a window touching more is read alone.
_READ_BUDGET = 512 * 2**20
# Window sides tried by the automatic choice, largest first, and how many candidate
# windows it wants: larger windows are more precise, more windows are more robust.
_WINDOW_SIZES = (64, 48, 32, 24)
_TARGET_WINDOWS = 16
# Correlation above which windows stop gaining weight (weight rho^2 / (1 - rho^2) = 100).
_MAX_CORRELATION = 0.995
# Median of the distance to the centre of a 2-D Gaussian, in units of its per-axis sigma.
_RAYLEIGH_MEDIAN = math.sqrt(2 * math.log(2))


def _auto_window(ny: int, nx: int) -> int:
    for n in _WINDOW_SIZES:
        if (ny // n) * (nx // n) >= _TARGET_WINDOWS:
            return n
    return _WINDOW_SIZES[-1]


def _blur_valid(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable correlation with ``g`` in 'valid' mode: no value from outside enters."""
    rows = np.lib.stride_tricks.sliding_window_view(a, g.size, axis=0) @ g
    return np.lib.stride_tricks.sliding_window_view(rows, g.size, axis=1) @ g


def _hann(n: int) -> np.ndarray:
    # Tapers the window edges, which phase correlation would otherwise see as a shared
    # (zero-shift) feature of both images.
    h = np.hanning(n + 2)[1:-1]  # no zero weights at the very edge
    return np.outer(h, h)


# Beyond this magnitude a value is no reflectance but an undeclared no-data fill (e.g.
# float32's -3.4e38): a window skips it like NaN, instead of overflowing its statistics.
_MAX_ABS = 1e6


def _usable(a: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.isfinite(a) & (np.abs(a) <= _MAX_ABS)


def _window_shift(
    src: np.ndarray,
    ref: np.ndarray,
    bad_ref: np.ndarray,
    kernels: np.ndarray,
    *,
    factor: int,
    pad: int,
    margin: int,
    max_shift: float,
) -> dict[str, Any]:
    """The shift (dy, dx) in reference pixels (rows down, columns right) of one window.

    ``src`` is the window's source (band, n*factor + 2*pad, same), ``ref`` its reference
    (band, n, n) and ``bad_ref`` (n, n) flags reference pixels to ignore (no-data, cloud).
    """
    from skimage.registration import phase_cross_correlation

    nb, n = ref.shape[0], ref.shape[1]
    src_nan = np.asarray(~_usable(src).all(axis=0))
    if src_nan.mean() > _MAX_MASKED:
        return {"status": "nodata"}
    # Fill no-data so that the blur and the spline stay finite; the pixels it reaches are
    # tracked apart (``reach``) and left out of the comparison.
    filled = np.stack(
        [np.where(src_nan, np.nanmean(np.where(src_nan, np.nan, band)), band) for band in src]
    )
    widest = kernels[np.argmax([np.count_nonzero(k > 1e-6 * k.max()) for k in kernels])]
    reach = _blur_valid(src_nan.astype(np.float64), widest)
    # Blurred source at every source pixel, as cubic-spline coefficients: it can then be
    # sampled at any sub-pixel position. Its index i is centred on window pixel
    # i + margin + (factor - 1) / 2, so reference pixel j is at pad - margin + factor * j.
    coeffs = [
        ndimage.spline_filter(_blur_valid(filled[b].astype(np.float64), kernels[b]), order=3)
        for b in range(nb)
    ]
    base = pad - margin + factor * np.arange(n, dtype=np.float64)
    taper = _hann(n)
    ref0 = np.where(bad_ref, 0.0, ref)

    def grid_at(s: np.ndarray) -> Sequence[np.ndarray]:
        return np.meshgrid(base + factor * s[0], base + factor * s[1], indexing="ij")

    def peak(product: np.ndarray, upsample: int) -> np.ndarray:
        # skimage on a cross-power spectrum given in Fourier space (times a unit moving
        # spectrum): its peak search and matrix-multiply DFT refinement, on several bands
        # at once. It returns the shift that registers the moving image: minus the
        # displacement of the source content.
        with warnings.catch_warnings():
            # skimage also computes an RMS error, unused here, and warns when a tiny or
            # flat window makes it undefined; the peak position is still right.
            warnings.filterwarnings(
                "ignore", message="Could not determine RMS error", category=UserWarning
            )
            shift, _, _ = phase_cross_correlation(
                product,
                np.ones_like(product),
                space="fourier",
                upsample_factor=upsample,
                normalization=None,
            )
        return -np.asarray(shift, dtype=np.float64)

    def measure(s: np.ndarray):
        """Whitened cross-power spectrum per usable band at the shift ``s``."""
        where = grid_at(s)
        good = ~bad_ref & (ndimage.map_coordinates(reach, where, order=1) < 1e-3)
        if good.mean() < 1.0 - _MAX_MASKED:
            return None, good, []
        weight = taper * good
        total = weight.sum()
        spectra, samples = {}, []
        for b in range(nb):
            d = ndimage.map_coordinates(coeffs[b], where, order=3, prefilter=False)
            samples.append(d)
            r = ref0[b]
            if np.std(r[good]) == 0 or np.std(d[good]) == 0:
                continue  # a flat band holds no position
            # Weighted means removed first, so the mask's own outline carries no signal.
            rw = weight * (r - (weight * r).sum() / total)
            dw = weight * (d - (weight * d).sum() / total)
            product = fft.fft2(rw) * np.conj(fft.fft2(dw))
            # Phase correlation: every frequency weighs the same, whatever its energy.
            spectra[b] = product / np.maximum(np.abs(product), 1e-30)
        return spectra, good, samples

    s = np.zeros(2)
    per_band = np.full((nb, 2), np.nan)
    # Cheap coarse peak refinement while far, fine refinement once close: the correlation
    # reads a fraction of the residual, so the fixed point is reached when the step falls
    # below the resolution of the peak.
    upsample, it = _UPSAMPLE_COARSE, 0
    while True:
        it += 1
        spectra, good, samples = measure(s)
        if spectra is None:
            return {"status": "nodata"}
        if not spectra:
            return {"status": "flat"}
        # All bands vote in one correlation surface: their whitened spectra summed.
        step = peak(sum(spectra.values()) / len(spectra), upsample)
        s = s + step
        if np.abs(s).max() > max_shift:
            return {"status": "beyond_max_shift", "shift": s, "bands": per_band, "iterations": it}
        converged = np.abs(step).max() <= 1.0 / upsample
        if upsample == _UPSAMPLE and (converged or it >= _MAX_ITER):
            for b, product in spectra.items():
                per_band[b] = s - step + peak(product, _UPSAMPLE_COARSE)
            break
        if converged or it >= _MAX_ITER:
            upsample = _UPSAMPLE
    corr = [
        np.corrcoef(samples[b][good], ref[b][good])[0, 1]
        for b in range(nb)
        if np.std(ref[b][good]) > 0 and np.std(samples[b][good]) > 0
    ]
    return {
        "status": "inlier",
        "shift": s,
        "bands": per_band,
        "correlation": float(np.mean(corr)) if corr else float("nan"),
        "iterations": it,
    }


def _compute(arrays: Sequence[Any]) -> list[np.ndarray]:
    return [np.asarray(a) for a in dask.compute(*arrays)] if arrays else []


def _chunk_ids(chunks: tuple[tuple[int, ...], ...], sl: tuple[slice, ...]) -> set[tuple]:
    """The chunks (index tuples) a slice of a chunked array touches."""
    spans = []
    for sizes, s in zip(chunks, sl, strict=True):
        bounds = np.cumsum((0, *sizes))
        start, stop, _ = s.indices(int(bounds[-1]))
        first = int(np.searchsorted(bounds, start, side="right")) - 1
        last = int(np.searchsorted(bounds, max(stop, start + 1), side="left")) - 1
        spans.append(range(first, last + 1))
    return set(product(*spans))


def _read_windows(data: Any, slices: Sequence[tuple[slice, ...]]) -> list[np.ndarray]:
    """``data[s]`` for every slice, read in groups that touch at most _READ_BUDGET of chunks.

    Each group is one computation, so a chunk that several of its windows share is read
    once; memory stays bounded by the budget, not by the number of windows.
    """
    chunks = getattr(data, "chunks", None)
    if not isinstance(chunks, tuple):  # NumPy: slicing reads nothing
        return _compute([data[s] for s in slices])
    chunk_bytes = np.prod([max(c) for c in chunks]) * data.dtype.itemsize
    out: list[np.ndarray] = []
    group: list[tuple[slice, ...]] = []
    touched: set[tuple] = set()
    for s in slices:
        ids = _chunk_ids(chunks, s)
        if group and len(touched | ids) * chunk_bytes > _READ_BUDGET:
            out += _compute([data[g] for g in group])
            group, touched = [], set()
        group.append(s)
        touched |= ids
    return out + _compute([data[g] for g in group])


def estimate_on_grid(
    src: xr.DataArray,
    ref: xr.DataArray,
    mask: xr.DataArray | None,
    *,
    factor: int,
    sigmas: Sequence[float],
    bands: Sequence[str],
    window: int | None = None,
    max_windows: int = 64,
    max_shift: float = 4.0,
    min_windows: int = 3,
    seed: int = 0,
) -> ShiftEstimate:
    """Estimate the shift of a source already on the phase-aligned grid of ``ref``.

    Parameters
    ----------
    src : xarray.DataArray
        Source reflectance (band, factor*Y, factor*X) on the grid in phase with ``ref``
        (:func:`xharmonise.grid.align_source`), NaN at no-data; NumPy or Dask.
    ref : xarray.DataArray
        Reference reflectance (band, Y, X) over the same footprint.
    mask : xarray.DataArray, optional
        Cloud mask (Y, X) on ``ref``'s grid, True or 1 = cloud.
    factor : int
        Source pixels per reference pixel.
    sigmas : sequence of float
        Per-band MTF Gaussian sigma, source pixels.
    bands : sequence of str
        Band names for the per-band results.
    window : int, optional
        Window side in reference pixels; by default the largest of 64, 48, 32, 24 that
        gives at least 16 windows.
    max_windows : int
        Stop once this many windows have been measured.
    max_shift : float
        Largest shift searched, reference pixels.
    min_windows : int
        Fewest agreeing windows accepted.
    seed : int
        Seeds the order in which windows are visited (spread over the overlap).

    Returns
    -------
    ShiftEstimate

    Raises
    ------
    CoregistrationError
        Too small an overlap, too few usable windows, or windows that disagree.

    Examples
    --------
    >>> from xharmonise import grid
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((600, 600), shift=(2.0, 0.0), seed=3)
    >>> g = grid.pair_grid(pair.src, pair.ref)
    >>> est = estimate_on_grid(
    ...     grid.align_source(pair.src, g), pair.ref.isel(y=g.ref_rows, x=g.ref_cols), None,
    ...     factor=g.factor, sigmas=[2.5] * 4, bands=["B2", "B3", "B4", "B8"],
    ... )
    >>> round(est.east, 1), round(est.north, 1)
    (2.0, 0.0)
    """
    nb = src.sizes["band"]
    ny, nx = ref.sizes["y"], ref.sizes["x"]
    margin = max(psf.kernel_margin(s, factor) for s in sigmas)
    kernels = np.stack([psf.gaussian_kernel(s, factor, margin).sum(axis=0) for s in sigmas])
    # Source pixels needed around a window: the kernel, the search range and the cubic
    # spline's support.
    pad = margin + math.ceil(max_shift * factor) + 2
    ring = -(-pad // factor)
    n = window if window is not None else _auto_window(ny - 2 * ring, nx - 2 * ring)
    origins = [
        (r, c) for r in range(ring, ny - ring - n + 1, n) for c in range(ring, nx - ring - n + 1, n)
    ]
    if not origins:
        raise CoregistrationError(
            f"the overlap ({ny} x {nx} reference pixels) cannot hold one {n}-pixel window "
            f"with the {ring}-pixel margin that max_shift={max_shift:g} needs: give a "
            "larger overlap, or a smaller window= or max_shift="
        )
    order = np.random.default_rng(seed).permutation(len(origins))
    px = abs(float(ref["x"].values[1] - ref["x"].values[0])) if nx > 1 else float("nan")
    xs, ys = np.asarray(ref["x"].values), np.asarray(ref["y"].values)

    rows: list[dict[str, Any]] = []
    measured = 0
    for start in range(0, len(order), _BATCH):
        if measured >= max_windows:
            break
        batch = [origins[i] for i in order[start : start + _BATCH]]
        refs = _compute([ref.data[:, r : r + n, c : c + n] for r, c in batch])
        clouds = (
            _compute([mask.data[r : r + n, c : c + n] for r, c in batch])
            if mask is not None
            else [None] * len(batch)
        )
        todo: list[tuple[dict[str, Any], np.ndarray, np.ndarray]] = []
        for (r, c), rw, cw in zip(batch, refs, clouds, strict=True):
            row = {"row": r, "col": c, "x": xs[c : c + n].mean(), "y": ys[r : r + n].mean()}
            rows.append(row)
            nodata = ~_usable(rw).all(axis=0)
            cloud = np.zeros_like(nodata) if cw is None else np.asarray(cw, dtype=bool)
            bad = nodata | cloud
            if bad.mean() > _MAX_MASKED:
                row["status"] = "cloud" if cloud.sum() >= nodata.sum() else "nodata"
            elif measured + len(todo) < max_windows:
                todo.append((row, rw, bad))
            else:
                rows.pop()  # not examined: the budget is spent
        source_windows = _read_windows(
            src.data,
            [
                (
                    slice(None),
                    slice(row["row"] * factor - pad, (row["row"] + n) * factor + pad),
                    slice(row["col"] * factor - pad, (row["col"] + n) * factor + pad),
                )
                for row, _, _ in todo
            ],
        )
        for (row, rw, bad), sw in zip(todo, source_windows, strict=True):
            result = _window_shift(
                sw, rw, bad, kernels, factor=factor, pad=pad, margin=margin, max_shift=max_shift
            )
            row["status"] = result["status"]
            if "shift" in result:
                row["dy"], row["dx"] = result["shift"]
                row["band_shifts"] = result["bands"]
                row["correlation"] = result.get("correlation", np.nan)
                row["iterations"] = result["iterations"]
            measured += 1

    return _combine(rows, bands=bands, nb=nb, pixel_size=px, min_windows=min_windows)


def _too_few(n_ok: int, n_rows: int, counts: dict[str, int], min_windows: int) -> str:
    """The message for too few measured windows, with fixes for what rejected the rest."""
    why = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()) if k != "inlier")
    fixes = []
    if counts.get("cloud"):
        fixes.append("a clearer pair or a mask that covers less")
    if counts.get("nodata"):
        fixes.append("a larger overlap with fewer no-data pixels")
    if counts.get("beyond_max_shift"):
        fixes.append("a larger max_shift= if the shift may exceed it")
    if counts.get("flat"):
        fixes.append("an area with more texture")
    fixes.append("a smaller window= (more windows)")
    return (
        f"only {n_ok} of the {n_rows} windows examined could be measured "
        f"({why or 'none rejected'}; {min_windows} needed): give " + ", or ".join(fixes)
    )


def _combine(
    rows: list[dict[str, Any]],
    *,
    bands: Sequence[str],
    nb: int,
    pixel_size: float,
    min_windows: int,
) -> ShiftEstimate:
    ok = [i for i, row in enumerate(rows) if row["status"] == "inlier"]
    counts = pd.Series([row["status"] for row in rows]).value_counts().to_dict()
    if len(ok) < min_windows:
        raise CoregistrationError(_too_few(len(ok), len(rows), counts, min_windows))
    v = np.array([[rows[i]["dy"], rows[i]["dx"]] for i in ok])
    # A window's precision grows with its signal-to-noise ratio rho^2 / (1 - rho^2): a
    # clean window counts far more than one half under an unmasked cloud or a change. The
    # cap stops one near-perfect window from outvoting all the others.
    rho = np.clip(np.nan_to_num([rows[i]["correlation"] for i in ok]), 0.0, _MAX_CORRELATION)
    weight = rho**2 / (1.0 - rho**2)

    def mean(sel: np.ndarray) -> np.ndarray:
        w = weight[sel] if weight[sel].sum() > 0 else np.ones(int(sel.sum()))
        return (v[sel] * w[:, None]).sum(axis=0) / w.sum()

    centre = np.median(v, axis=0)
    dist = np.hypot(*(v - centre).T)
    sigma = np.median(dist) / _RAYLEIGH_MEDIAN
    tolerance = max(3.0 * sigma, _MIN_TOLERANCE)
    for _ in range(2):  # around the median, then around the mean of those that agree
        agree = dist <= tolerance
        centre = mean(agree)
        dist = np.hypot(*(v - centre).T)
    agree = dist <= tolerance
    if agree.sum() < min_windows:
        raise CoregistrationError(
            f"the {len(ok)} measured windows disagree (only {int(agree.sum())} within "
            f"{tolerance:.2f} pixel of each other): the pair may have changed between dates "
            "or hold unmasked clouds; give a cloud mask (mask=) or larger windows (window=)"
        )
    centre = mean(agree)
    w = weight[agree] if weight[agree].sum() > 0 else np.ones(int(agree.sum()))
    n_eff = w.sum() ** 2 / (w**2).sum()
    variance = (w * dist[agree] ** 2).sum() / w.sum() * n_eff / max(n_eff - 1.0, 1.0)
    std_error = math.sqrt(variance / n_eff)
    for i, a in zip(ok, agree, strict=True):
        rows[i]["status"] = "inlier" if a else "outlier"
    band_shifts = np.stack([rows[i]["band_shifts"] for i in np.asarray(ok)[agree]])
    per_band = np.nansum(band_shifts * w[:, None, None], axis=0) / w.sum()

    table = pd.DataFrame(
        {
            "row": [row["row"] for row in rows],
            "col": [row["col"] for row in rows],
            "x": [float(row["x"]) for row in rows],
            "y": [float(row["y"]) for row in rows],
            "status": [row["status"] for row in rows],
        }
    )
    dy = np.array([row.get("dy", np.nan) for row in rows], dtype=np.float64)
    dx = np.array([row.get("dx", np.nan) for row in rows], dtype=np.float64)
    table["east"], table["north"] = dx * pixel_size, -dy * pixel_size
    table["east_px"], table["north_px"] = dx, -dy
    nan_bands = np.full((nb, 2), np.nan)
    for b, name in enumerate(bands):
        s = np.array([row.get("band_shifts", nan_bands)[b] for row in rows])
        table[f"east_{name}"] = s[:, 1] * pixel_size
        table[f"north_{name}"] = -s[:, 0] * pixel_size
    table["correlation"] = [float(row.get("correlation", np.nan)) for row in rows]
    table["iterations"] = [int(row.get("iterations", 0)) for row in rows]

    return ShiftEstimate(
        east=float(centre[1] * pixel_size),
        north=float(-centre[0] * pixel_size),
        pixel_size=pixel_size,
        confidence=float(agree.mean()),
        std_error=std_error * pixel_size,
        bands={
            name: (float(per_band[b, 1] * pixel_size), float(-per_band[b, 0] * pixel_size))
            for b, name in enumerate(bands)
        },
        windows=table,
    )
