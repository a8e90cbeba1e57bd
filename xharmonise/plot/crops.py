"""Full-resolution image crops: before/after colour composites and the variance map.

Only the window is computed: Dask-backed inputs are read under it, nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr
from matplotlib import colormaps
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter

from xharmonise.errors import BandMismatchError, GridError, InputValueError
from xharmonise.grid import centred_window
from xharmonise.plot.figures import DPI, new_figure
from xharmonise.scaling import as_band_array, band_names, to_reflectance

__all__ = [
    "Crop",
    "compute_crop",
    "draw_applicability",
    "draw_rgb",
    "draw_variance",
    "rgb_crop",
    "variance_map",
]

# Default before/after window: large enough to judge texture, small enough to compute
# quickly and to show at one screen pixel per image pixel.
_MAX_CROP = 512

# Robust stretch percentiles for colour composites, and variance colour limits.
_STRETCH = (2.0, 98.0)

_VARIANCE_LIMITS = (0.5, 99.9)

# No-data in image panels: a neutral grey, distinct from black and white content.
_NODATA_GREY = 0.74

# Colour triples by naming convention, tried on the reference (prediction) band names
# first, then on the source's: Sentinel-2, Pleiades, then generic names.
_RGB_TRIPLES = (("B4", "B3", "B2"), ("B2", "B1", "B0"), ("RED", "GREEN", "BLUE"), ("R", "G", "B"))


def _as_dataarray(obj: xr.DataArray | xr.Dataset, name: str) -> xr.DataArray:
    obj = as_band_array(obj, name)
    if not isinstance(obj, xr.DataArray) or set(obj.dims) != {"band", "y", "x"}:
        dims = getattr(obj, "dims", type(obj).__name__)
        raise InputValueError(
            f"{name} must be a (band, y, x) DataArray, got {dims}: transpose or rename its "
            "dimensions, e.g. da.transpose('band', 'y', 'x')"
        )
    return obj.transpose("band", "y", "x")


def _prediction_parts(prediction: xr.Dataset | xr.DataArray) -> tuple[xr.DataArray, Any]:
    """The prediction and the variance (or None) of what :func:`xharmonise.predict` returns."""
    if isinstance(prediction, xr.DataArray):
        return _as_dataarray(prediction, "the prediction"), None
    if not isinstance(prediction, xr.Dataset) or "prediction" not in prediction:
        raise InputValueError(
            "prediction must be the Dataset returned by xharmonise.predict(src, model) "
            f"(with a 'prediction' variable), got {type(prediction).__name__}"
        )
    pred = _as_dataarray(prediction["prediction"], "the prediction")
    var = prediction.get("variance")
    return pred, None if var is None else _as_dataarray(var, "the variance")


def _resolve_crop(shape: tuple[int, int], crop: Sequence[slice] | None) -> tuple[slice, slice]:
    """Normalise ``crop`` to two in-bounds unit-step slices; default a centred window."""
    if crop is None:
        return centred_window(shape, _MAX_CROP)
    if len(crop) != 2 or not all(isinstance(s, slice) for s in crop):
        raise InputValueError(
            f"crop must be (y slice, x slice) in pixels, e.g. (slice(0, 512), slice(0, 512)), "
            f"got {crop!r}"
        )
    out = []
    for s, n, axis in zip(crop, shape, ("y", "x"), strict=True):
        start = 0 if s.start is None else s.start
        stop = n if s.stop is None else s.stop
        if s.step not in (None, 1):
            raise InputValueError(
                f"crop {axis} slice {s} has a step: full resolution means step 1, e.g. "
                f"slice({start}, {stop})"
            )
        if not (0 <= start < stop <= n):
            raise InputValueError(
                f"crop {axis} slice {start}:{stop} is outside the image's {n} {axis} pixels: "
                f"choose 0 <= start < stop <= {n} (crop=None picks a centred window)"
            )
        out.append(slice(int(start), int(stop)))
    return out[0], out[1]


def _check_pair(src: xr.DataArray, pred: xr.DataArray, moved: Sequence[float] | None) -> None:
    """Raise unless ``pred`` holds ``src``'s pixels: same shape and pixel grid.

    ``moved`` is the (east, north) shift a co-registered model's predict moved the output
    coordinates by (minus it, in fact): up to that, the grids must coincide.
    """
    ss = (src.sizes["y"], src.sizes["x"])
    ps = (pred.sizes["y"], pred.sizes["x"])
    same = ss == ps
    # A moved output may sit up to the shift away (more than it in another CRS, a little).
    slack = 0.0 if moved is None else 1.5 * float(np.hypot(moved[0], moved[1]))
    for dim in ("y", "x"):
        if not same or dim not in src.coords or dim not in pred.coords:
            continue
        a = np.asarray(src[dim].values, dtype=float)
        b = np.asarray(pred[dim].values, dtype=float)
        step = abs(float(a[1] - a[0])) if len(a) > 1 else 1.0
        offset = float(b[0] - a[0])
        # Same spacing everywhere, and the same origin up to the georeferencing move.
        if not np.allclose(b - offset, a, rtol=0, atol=1e-3 * step):
            same = False
        elif abs(offset) > slack + 1e-3 * step:
            same = False
    if not same:
        raise GridError(
            f"the prediction ({ps[0]} x {ps[1]} pixels) is not on the source's grid "
            f"({ss[0]} x {ss[1]} pixels, same coordinates expected): pass "
            "prediction=xharmonise.predict(src, model) computed from this src"
        )


def _source_bands(src: xr.DataArray, pred: xr.DataArray, prediction: Any) -> xr.DataArray:
    """``src`` restricted to the prediction's source bands, in the model's order."""
    wanted = None
    if isinstance(prediction, xr.Dataset):
        wanted = prediction.attrs.get("source_bands")
    names = band_names(src)
    if wanted is not None and list(wanted) != names:
        wanted = [str(b) for b in np.atleast_1d(wanted)]
        if all(b in names for b in wanted):
            return src.isel(band=[names.index(b) for b in wanted])
    if src.sizes["band"] != pred.sizes["band"]:
        raise BandMismatchError(
            f"the source has {src.sizes['band']} bands {names}, the prediction "
            f"{pred.sizes['band']}: pass the src the prediction was computed from, or select "
            f"its bands, e.g. src.sel(band={wanted or '[...]'})"
        )
    return src


def _rgb_indices(ref_names: Sequence[str], src_names: Sequence[str]) -> tuple[list[int], bool]:
    """Indices of red, green, blue and whether they were recognised from the band names."""
    for names in (ref_names, src_names):
        upper = [str(n).upper() for n in names]
        for triple in _RGB_TRIPLES:
            if all(t in upper for t in triple):
                return [upper.index(t) for t in triple], True
    n = len(ref_names)
    # Unknown names: blue-green-red(-NIR) is the usual band order of optical products.
    return ([2, 1, 0] if n >= 3 else [0, 0, 0]), False


@dataclass(frozen=True)
class Crop:
    """A computed window of a source image and its prediction, and what titles need.

    Attributes
    ----------
    before : numpy.ndarray or None
        (band, y, x) source reflectance, bands paired with ``after``'s; None when not
        asked for.
    after : numpy.ndarray
        (band, y, x) prediction.
    variance : numpy.ndarray or None
        (band, y, x) predictive variance; None when not asked for.
    src_names, ref_names : list of str
        Band names of ``before`` and ``after``.
    window : (slice, slice)
        Rows and columns of the window in the image's pixels.
    pixel : float or None
        Pixel size in CRS units, when the image has coordinates.
    applicability : numpy.ndarray or None
        (y, x) applicability (:mod:`xharmonise.applicability`); None when not asked for.
    """

    before: np.ndarray | None
    after: np.ndarray
    variance: np.ndarray | None
    src_names: list[str]
    ref_names: list[str]
    window: tuple[slice, slice]
    pixel: float | None
    applicability: np.ndarray | None = None

    def describe(self) -> str:
        """Where the window lies, e.g. ``rows 0:512, cols 0:512 (512 x 512 px, 2 m pixels)``."""
        (ys, xs), px = self.window, self.pixel
        size = f"{ys.stop - ys.start} x {xs.stop - xs.start} px"
        res = f", {px:g} m pixels" if px else ""
        return f"rows {ys.start}:{ys.stop}, cols {xs.start}:{xs.stop} ({size}{res})"


def compute_crop(
    src: xr.DataArray | xr.Dataset | None,
    prediction: xr.Dataset | xr.DataArray,
    crop: Sequence[slice] | None = None,
    *,
    scale: float | None = None,
    offset: float | None = None,
    need_src: bool = True,
    need_variance: bool = False,
    need_applicability: bool = False,
) -> Crop:
    """Select a window of ``src`` and ``prediction`` lazily and compute only it.

    Everything is computed in one Dask pass, so the source chunks under the window are
    read once for the source and its prediction together.

    Parameters
    ----------
    src : xarray.DataArray, optional
        The source (band, y, x) ``prediction`` was computed from; needed when
        ``need_src``.
    prediction : xarray.Dataset
        From :func:`xharmonise.predict`, usually lazy.
    crop : (slice, slice), optional
        Window (y, x) in pixels; by default a centred window of at most 512 x 512.
    scale, offset : float, optional
        Reflectance = DN x scale + offset for an integer ``src``.
    need_src, need_variance, need_applicability : bool
        Compute the source window, the variance window, the applicability window.

    Returns
    -------
    Crop

    Raises
    ------
    InputValueError
        ``crop`` outside the image, ``src`` missing, or no variance (applicability) when
        one is needed.
    GridError
        ``prediction`` is not on ``src``'s grid.
    BandMismatchError
        The bands of ``src`` and ``prediction`` cannot be paired.
    """
    import dask

    pred, var = _prediction_parts(prediction)
    window = _resolve_crop((pred.sizes["y"], pred.sizes["x"]), crop)
    sel = {"y": window[0], "x": window[1]}
    before = None
    src_names: list[str] = []
    if need_src:
        if src is None:
            raise InputValueError(
                "a before/after crop needs the source: pass src= (the image the prediction "
                "was computed from)"
            )
        src_da = _as_dataarray(src, "the source")
        moved = (
            prediction.attrs.get("coregistration_shift") if hasattr(prediction, "attrs") else None
        )
        _check_pair(src_da, pred, moved)
        src_da = _source_bands(src_da, pred, prediction)
        src_names = band_names(src_da)
        # Crop first: reflectance scaling of a NumPy image would otherwise touch all of it.
        before = to_reflectance(src_da.isel(sel), scale=scale, offset=offset, name="the source")
    if need_variance and var is None:
        raise InputValueError(
            "the prediction has no 'variance' variable: fit the model with variance=True "
            "and predict with with_variance=True"
        )
    app = prediction.get("applicability") if isinstance(prediction, xr.Dataset) else None
    if need_applicability and app is None:
        raise InputValueError(
            "the prediction has no 'applicability' variable: predict with with_applicability=True"
        )
    lazy = [
        before,
        pred.isel(sel),
        var.isel(sel) if (need_variance and var is not None) else None,
        app.isel(sel) if need_applicability and app is not None else None,
    ]
    b, a, v, ap = dask.compute(*lazy)
    pixel = None
    if "x" in pred.coords and pred.sizes["x"] > 1:
        pixel = abs(float(pred["x"].values[1] - pred["x"].values[0]))
    return Crop(
        before=None if b is None else np.asarray(b.values, dtype=np.float32),
        after=np.asarray(a.values, dtype=np.float32),
        variance=None if v is None else np.asarray(v.values, dtype=np.float32),
        src_names=src_names,
        ref_names=[str(n) for n in pred["band"].values] if "band" in pred.coords else [],
        window=window,
        pixel=pixel,
        applicability=None if ap is None else np.asarray(ap.values, dtype=np.float32),
    )


def _panel_size(c: Crop) -> tuple[float, float]:
    """Panel size in inches showing the crop at one screen pixel per image pixel at least."""
    h, w = c.window[0].stop - c.window[0].start, c.window[1].stop - c.window[1].start
    # Small crops are magnified by an integer factor (nearest neighbour) to stay legible.
    zoom = max(1, int(np.ceil(320 / max(h, w))))
    return w * zoom / DPI, h * zoom / DPI


def _stretch(*images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Robust limits over all channels of all images together.

    One pair of limits for every channel keeps grey grey and a haze's colour cast
    visible; one pair for every image keeps brightness comparable between them.
    """
    values = np.concatenate([im.ravel() for im in images])
    values = values[np.isfinite(values)]
    lo, hi = (float(v) for v in np.percentile(values, _STRETCH)) if values.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1e-6
    n = images[0].shape[0]
    return np.full(n, lo), np.full(n, hi)


def _to_rgb(image: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(band, y, x) -> (y, x, 3) in [0, 1]; no-data grey as in the variance map."""
    rgb = (image - lo[:, None, None]) / (hi - lo)[:, None, None]
    valid = np.isfinite(rgb).all(axis=0)
    rgb = np.clip(np.nan_to_num(rgb, nan=0.0), 0.0, 1.0)
    rgb[:, ~valid] = _NODATA_GREY
    return np.moveaxis(rgb, 0, -1)


def draw_rgb(c: Crop) -> Figure:
    """The before/after colour composites of a computed crop (see :func:`rgb_crop`).

    Raises
    ------
    InputValueError
        The crop was computed without its source (``need_src=False``).
    """
    if c.before is None:
        raise InputValueError(
            "the crop holds no source window: compute it with need_src=True (and src=)"
        )
    idx, known = _rgb_indices(c.ref_names, c.src_names)
    before, after = c.before[idx], c.after[idx]
    lo, hi = _stretch(before, after)
    w, h = _panel_size(c)
    fig = new_figure(max(2 * w + 0.4, 7.0), h + 0.9)  # wide enough for the titles
    axes = fig.subplots(1, 2)

    def names(all_names: list[str]) -> str:
        return "/".join(all_names[i] for i in idx) if all_names else "bands " + str(idx)

    guess = "" if known else " (bands guessed)"
    for ax, image, label in (
        (axes[0], before, f"before: source {names(c.src_names)}{guess}"),
        (axes[1], after, f"after: prediction {names(c.ref_names)}{guess}"),
    ):
        ax.imshow(_to_rgb(image, lo, hi), interpolation="nearest")
        ax.set_title(label, fontsize=10)
        ax.set_axis_off()
    nodata = not (np.isfinite(before).all() and np.isfinite(after).all())
    fig.suptitle(
        f"{c.describe()}; one linear stretch for both images and all channels"
        + ("; grey: no-data" if nodata else ""),
        fontsize=9,
    )
    return fig


def draw_variance(c: Crop, band: str | int | None = None) -> Figure:
    """The variance map of a computed crop (see :func:`variance_map`).

    Raises
    ------
    InputValueError
        The crop was computed without the variance (``need_variance=False``).
    BandMismatchError
        ``band`` is not one of the prediction's bands.
    """
    if c.variance is None:
        raise InputValueError(
            "the crop holds no variance: compute it with need_variance=True from a "
            "prediction with a 'variance' variable"
        )
    if band is None:
        # Clouds and changes raise the variance of every band: the band mean shows them.
        # (np.nanmean would warn on no-data pixels, NaN in every band.)
        finite = np.isfinite(c.variance)
        total = np.where(finite, c.variance, 0.0).sum(axis=0)
        count = finite.sum(axis=0)
        values = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        what = "mean over bands"
    else:
        if isinstance(band, str):
            if band not in c.ref_names:
                raise BandMismatchError(
                    f"band {band!r} is not in the prediction's bands {c.ref_names}: pick one "
                    "of them, or band=None for the mean over bands"
                )
            i = c.ref_names.index(band)
        else:
            i = int(band)
            if not 0 <= i < c.variance.shape[0]:
                raise BandMismatchError(
                    f"band index {i} is out of range for {c.variance.shape[0]} bands: give "
                    f"0..{c.variance.shape[0] - 1}, a band name, or band=None for the mean"
                )
        values, what = c.variance[i], f"band {c.ref_names[i] if c.ref_names else i}"
    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size:
        vmin, vmax = (float(p) for p in np.percentile(positive, _VARIANCE_LIMITS))
    else:
        vmin, vmax = 1e-6, 1e-5
    if vmax <= vmin:
        vmax = vmin * 10
    w, h = _panel_size(c)
    # A wide window gets its colourbar below, where it has room for its ticks.
    wide = w > 1.6 * h
    fig = new_figure(max(w + (0.3 if wide else 1.4), 5.0), h + (1.8 if wide else 0.9))
    ax = fig.subplots()
    cmap = colormaps["magma"].with_extremes(bad=(_NODATA_GREY,) * 3)
    masked = np.ma.masked_invalid(np.where(values > 0, values, np.nan))
    im = ax.imshow(
        masked, norm=LogNorm(vmin=vmin, vmax=vmax, clip=True), cmap=cmap, interpolation="nearest"
    )
    ax.set_axis_off()
    # A short label: it must fit along the colourbar of a small crop.
    bar = fig.colorbar(
        im,
        ax=ax,
        label="σ² (reflectance²)",
        location="bottom" if wide else "right",
        shrink=0.6 if wide else 0.9,
    )
    # Five evenly spaced (in log) labelled ticks: a log axis spanning less than a decade
    # otherwise labels crowded minor ticks, or none.
    ticks = [float(f"{t:.2g}") for t in np.geomspace(vmin, vmax, 5)]
    bar.set_ticks([t for t in ticks if vmin <= t <= vmax])
    bar.minorticks_off()
    bar.formatter = FormatStrFormatter("%.2g")
    bar.update_ticks()
    ax.set_title(f"predictive variance σ², {what}, log scale\nhigh = low confidence", fontsize=10)
    nodata = not np.isfinite(values).all()
    fig.suptitle(c.describe() + ("; grey: no-data" if nodata else ""), fontsize=9)
    return fig


def draw_applicability(c: Crop) -> Figure:
    """The applicability map of a computed crop, on a logarithmic scale, the pixels
    outside the training domain (below ``OUT_OF_DOMAIN``) outlined in red.

    Raises
    ------
    InputValueError
        The crop was computed without it (``need_applicability=False``).

    Examples
    --------
    >>> from xharmonise import fit, predict
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((200, 200), seed=1)
    >>> model = fit(pair.src, pair.ref, method="linear", patch_size=8, progress=False)
    >>> out = predict(pair.src, model, with_applicability=True)  # 0.4 % outside: no warning
    >>> crop = compute_crop(None, out, need_src=False, need_applicability=True)
    >>> draw_applicability(crop).axes[0].get_title().splitlines()[0]
    'applicability (share of training pixels as far out), log scale'
    """
    from xharmonise.applicability import OUT_OF_DOMAIN

    if c.applicability is None:
        raise InputValueError(
            "the crop holds no applicability: compute it with need_applicability=True from "
            "a prediction with an 'applicability' variable"
        )
    values = c.applicability
    floor = 1e-5
    w, h = _panel_size(c)
    wide = w > 1.6 * h
    fig = new_figure(max(w + (0.3 if wide else 1.4), 5.0), h + (1.8 if wide else 0.9))
    ax = fig.subplots()
    cmap = colormaps["viridis"].with_extremes(bad=(_NODATA_GREY,) * 3)
    shown = np.ma.masked_invalid(np.where(np.isfinite(values), np.maximum(values, floor), np.nan))
    im = ax.imshow(
        shown, norm=LogNorm(vmin=floor, vmax=1.0, clip=True), cmap=cmap, interpolation="nearest"
    )
    outside = np.isfinite(values) & (values < OUT_OF_DOMAIN)
    if outside.any() and not outside.all():
        ax.contour(outside.astype(float), levels=[0.5], colors="red", linewidths=0.8)
    ax.set_axis_off()
    fig.colorbar(
        im,
        ax=ax,
        label="applicability",
        location="bottom" if wide else "right",
        shrink=0.6 if wide else 0.9,
    )
    share = float(outside.sum()) / max(int(np.isfinite(values).sum()), 1)
    ax.set_title(
        "applicability (share of training pixels as far out), log scale\n"
        f"red: outside the training domain (< {OUT_OF_DOMAIN:g}), {share:.1%} of the window",
        fontsize=10,
    )
    nodata = not np.isfinite(values).all()
    fig.suptitle(c.describe() + ("; grey: no-data" if nodata else ""), fontsize=9)
    return fig


def rgb_crop(
    src: xr.DataArray | xr.Dataset,
    prediction: xr.Dataset | xr.DataArray,
    crop: Sequence[slice] | None = None,
    *,
    scale: float | None = None,
    offset: float | None = None,
) -> Figure:
    """Before/after colour composites of a window at full resolution.

    Red, green and blue are picked from band names (Sentinel-2 B4/B3/B2 in the
    prediction, else Pleiades B2/B1/B0 in the source, else red/green/blue), the source
    using the bands paired with them. Both images share one robust stretch (2nd to 98th
    percentile per channel over both), so differences in brightness and colour are real.
    Only the window is computed: Dask-backed inputs are read under the window only.

    Parameters
    ----------
    src : xarray.DataArray
        The source (band, y, x) the prediction was computed from (reflectance, or DN
        with a ``scale_factor`` attribute or ``scale``).
    prediction : xarray.Dataset
        From :func:`xharmonise.predict` (its ``prediction`` variable is used).
    crop : (slice, slice), optional
        Window (y, x) in pixels; by default a centred window of at most 512 x 512.
    scale, offset : float, optional
        Reflectance = DN x scale + offset for an integer ``src`` without
        ``scale_factor``/``add_offset`` attributes.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    GridError
        ``prediction`` is not on ``src``'s grid.
    InputValueError
        ``crop`` is outside the image.

    Examples
    --------
    >>> from xharmonise import fit, predict
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((200, 200), seed=0)
    >>> model = fit(pair.src, pair.ref, method="linear", patch_size=8, progress=False)
    >>> fig = rgb_crop(pair.src, predict(pair.src, model), (slice(0, 100), slice(50, 150)))
    >>> fig.axes[1].get_title()
    'after: prediction B4/B3/B2'
    """
    c = compute_crop(
        src, prediction, crop, scale=scale, offset=offset, need_src=True, need_variance=False
    )
    return draw_rgb(c)


def variance_map(
    prediction: xr.Dataset,
    crop: Sequence[slice] | None = None,
    *,
    band: str | int | None = None,
) -> Figure:
    """The predictive variance of a window, on a logarithmic colour scale.

    Parameters
    ----------
    prediction : xarray.Dataset
        From :func:`xharmonise.predict` with a variance head (a ``variance`` variable).
    crop : (slice, slice), optional
        Window (y, x) in pixels; by default a centred window of at most 512 x 512.
    band : str or int, optional
        One band; by default the mean over bands.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    InputValueError
        No ``variance`` in ``prediction``, or ``crop`` outside the image.

    Examples
    --------
    >>> from xharmonise import fit, predict
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((200, 200), seed=0, src_clouds=0.05)
    >>> model = fit(pair.src, pair.ref, method="calibnet", variance=True, patch_size=8,
    ...             iterations=20, batch_size=2, progress=False)
    >>> window = pair.src.isel(y=slice(0, 100), x=slice(0, 100))  # pixelwise: any piece
    >>> fig = variance_map(predict(window, model))
    >>> fig.axes[1].get_ylabel()
    'σ² (reflectance²)'
    """
    c = compute_crop(None, prediction, crop, need_src=False, need_variance=True)
    return draw_variance(c, band)
