"""Figures of a fitted model and its self-contained HTML report.

The figures follow Michel & Inglada (2021): density scatter plots of the test split
against the reference (their Figures 4, 12, 15, 17), training curves against the linear
baseline (5, 6, 9), per-band metric bars (3, 11, 14, 16), BCNet's learned filters (10),
and, given an image, a before/after colour crop and the predictive variance map.

Every figure function returns a :class:`matplotlib.figure.Figure` built without pyplot,
so nothing leaks into pyplot's global state and no GUI backend is ever selected; the
figures render with Agg. :func:`report` writes them into one HTML file that opens offline
(images as ``data:`` URIs, inline CSS, no script, font or link) and, for reuse, as PNG
files in a sibling ``<stem>_files`` folder.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Circle
from matplotlib.ticker import FormatStrFormatter, MaxNLocator

from xharmonise.errors import BandMismatchError, GridError, InputValueError
from xharmonise.grid import centred_window
from xharmonise.scaling import band_names, scaling_like_training, to_reflectance

if TYPE_CHECKING:
    from xharmonise.harmoniser import Harmoniser

__all__ = [
    "filters",
    "loss_curves",
    "metric_bars",
    "report",
    "rgb_crop",
    "scatter_density",
    "variance_map",
]

# One colour per stage everywhere (bars, legends), so the eye learns it once.
_STAGE_COLOURS = {"initial": "#9a9a9a", "linear": "#3b75af", "model": "#d1495b"}
_METRIC_LABELS = {
    "rmse": ("RMSE", "lower is better"),
    "r2": ("R²", "higher is better"),
    "explained_variance": ("explained variance", "higher is better"),
    "max_error": ("max error", "lower is better"),
}
# R² and explained variance of the untouched source can be far below zero (a biased,
# hazy TOA image); below this the bars are clipped and labelled with their value so
# the useful range (0..1) stays readable.
_SCORE_FLOOR = -1.0
# Default before/after window: large enough to judge texture, small enough to compute
# quickly and to show at one screen pixel per image pixel.
_MAX_CROP = 512
# Robust stretch percentiles for colour composites, and variance colour limits.
_STRETCH = (2.0, 98.0)
_VARIANCE_LIMITS = (0.5, 99.9)
_DPI = 100
# Pixels predicted around the window when report() predicts it itself: more than the
# receptive field of any model (pixelwise ones need none), so the window is exact.
_PREDICT_MARGIN = 16
# No-data in image panels: a neutral grey, distinct from black and white content.
_NODATA_GREY = 0.74
# Colour triples by naming convention, tried on the reference (prediction) band names
# first, then on the source's: Sentinel-2, Pleiades, then generic names.
_RGB_TRIPLES = (("B4", "B3", "B2"), ("B2", "B1", "B0"), ("RED", "GREEN", "BLUE"), ("R", "G", "B"))
# Files report() writes into its folder; only these are replaced on a rerun.
_FIGURE_PREFIXES = ("metrics", "scatter_", "loss_curves", "filters", "rgb_crop", "variance_map")


# --------------------------------------------------------------------------- helpers
def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)  # Agg explicitly: rendering never depends on a display
    return fig


def _stages(model: Harmoniser) -> list[str]:
    stages = [str(s) for s in model.metrics["stage"].values]
    # A linear model's "model" stage is the linear baseline itself: showing it twice
    # would only suggest a difference that does not exist.
    if model.method == "linear" and "linear" in stages and "model" in stages:
        stages.remove("model")
    return stages


def _stage_label(model: Harmoniser, stage: str) -> str:
    return {
        "initial": "initial (source as is)",
        "linear": "linear baseline",
        "model": f"model ({model.method}{' + variance' if model.variance else ''})",
    }.get(stage, stage)


def _band_index(model: Harmoniser, band: str | int) -> int:
    if isinstance(band, int | np.integer) and not isinstance(band, bool):
        if 0 <= band < model.n_bands:
            return int(band)
    elif str(band) in model.ref_bands:
        return list(model.ref_bands).index(str(band))
    elif str(band) in model.src_bands:
        return list(model.src_bands).index(str(band))
    raise BandMismatchError(
        f"band {band!r} is not one of the model's bands: give a reference band name "
        f"{list(model.ref_bands)}, a source band name {list(model.src_bands)} or an index "
        f"0..{model.n_bands - 1}"
    )


def _require_samples(model: Harmoniser) -> dict[str, np.ndarray]:
    samples = model.samples or {}
    if "target" not in samples or len(samples["target"]) == 0:
        raise InputValueError(
            "the model holds no test-split samples (it was fitted or saved by an older "
            "xharmonise): fit it again with xharmonise.fit to get the scatter plots"
        )
    return samples


def _as_dataarray(obj: xr.DataArray | xr.Dataset, name: str) -> xr.DataArray:
    if isinstance(obj, xr.Dataset):
        if len(obj.data_vars) != 1:
            raise BandMismatchError(
                f"{name} is a Dataset with {len(obj.data_vars)} variables: pass a (band, y, "
                "x) DataArray, e.g. ds.to_dataarray('band')"
            )
        obj = next(iter(obj.data_vars.values()))
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
    slack = 0.0 if moved is None else 1.5 * float(np.hypot(*moved))
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


@dataclass
class _Crop:
    """Computed (NumPy) crop of a source / prediction pair, plus what the titles need."""

    before: np.ndarray | None  # (band, y, x) source reflectance
    after: np.ndarray | None  # (band, y, x) prediction
    variance: np.ndarray | None
    src_names: list[str]
    ref_names: list[str]
    window: tuple[slice, slice]
    pixel: float | None


def _compute_crop(
    src: xr.DataArray | xr.Dataset | None,
    prediction: xr.Dataset | xr.DataArray,
    crop: Sequence[slice] | None,
    *,
    scale: float | None,
    offset: float | None = None,
    need_src: bool,
    need_variance: bool,
    origin: tuple[int, int] = (0, 0),
) -> _Crop:
    """Select the window lazily and compute only it, everything in one Dask pass."""
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
            "and predict with variance=True"
        )
    lazy = [
        before,
        pred.isel(sel),
        var.isel(sel) if (need_variance and var is not None) else None,
    ]
    # One compute: the source chunks under the window are read once for both images.
    b, a, v = dask.compute(*lazy)
    pixel = None
    if "x" in pred.coords and pred.sizes["x"] > 1:
        pixel = abs(float(pred["x"].values[1] - pred["x"].values[0]))
    return _Crop(
        before=None if b is None else np.asarray(b.values, dtype=np.float32),
        after=np.asarray(a.values, dtype=np.float32),
        variance=None if v is None else np.asarray(v.values, dtype=np.float32),
        src_names=src_names,
        ref_names=[str(n) for n in pred["band"].values] if "band" in pred.coords else [],
        # Labelled in the full image's pixels when given a piece of it.
        window=(
            slice(window[0].start + origin[0], window[0].stop + origin[0]),
            slice(window[1].start + origin[1], window[1].stop + origin[1]),
        ),
        pixel=pixel,
    )


def _where(c: _Crop) -> str:
    (ys, xs), px = c.window, c.pixel
    size = f"{ys.stop - ys.start} x {xs.stop - xs.start} px"
    res = f", {px:g} m pixels" if px else ""
    return f"rows {ys.start}:{ys.stop}, cols {xs.start}:{xs.stop} ({size}{res})"


def _panel_size(c: _Crop) -> tuple[float, float]:
    """Panel size in inches showing the crop at one screen pixel per image pixel at least."""
    h, w = c.window[0].stop - c.window[0].start, c.window[1].stop - c.window[1].start
    # Small crops are magnified by an integer factor (nearest neighbour) to stay legible.
    zoom = max(1, int(np.ceil(320 / max(h, w))))
    return w * zoom / _DPI, h * zoom / _DPI


# --------------------------------------------------------------------------- figures
def scatter_density(model: Harmoniser, band: str | int, *, bins: int | None = None) -> Figure:
    """Density scatter plots of the test split against the reference for one band.

    One panel per stage (initial source, linear baseline, model; a linear model's model
    is its baseline and is shown once), each a 2-D histogram of the kept test-split
    pixels with a logarithmic colour scale shared by the panels, the 1:1 line and the
    stage's test RMSE (from ``model.metrics``) in its title. Every pixel is counted: the
    axes span all values, so outliers (e.g. unmasked clouds) stay visible.

    Parameters
    ----------
    model : Harmoniser
        A fitted model (its ``samples``).
    band : str or int
        Reference band name (e.g. ``"B8"``), source band name or band index.
    bins : int, optional
        Histogram bins per axis; by default from the number of pixels (50 to 150).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    BandMismatchError
        Unknown band.
    InputValueError
        The model holds no samples.

    Examples
    --------
    >>> from xharmonise import fit
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((200, 200), seed=0)
    >>> model = fit(pair.src, pair.ref, method="linear", patch_size=8, progress=False)
    >>> fig = scatter_density(model, "B8")
    >>> [ax.get_title().split("\\n")[0] for ax in fig.axes if ax.get_label() != "<colorbar>"]
    ['initial (source as is)', 'linear baseline']
    """
    samples = _require_samples(model)
    i = _band_index(model, band)
    ref, src = model.ref_bands[i], model.src_bands[i]
    stages = [s for s in _stages(model) if s in samples]
    target = samples["target"][:, i].astype(np.float64)
    values = {s: samples[s][:, i].astype(np.float64) for s in stages}
    finite = np.isfinite(target)
    for v in values.values():
        finite &= np.isfinite(v)
    n = int(finite.sum())
    if n == 0:
        raise InputValueError(f"band {ref} has no finite test samples: fit the model again")
    everything = np.concatenate([target[finite], *(v[finite] for v in values.values())])
    lo, hi = float(everything.min()), float(everything.max())
    pad = 0.02 * (hi - lo) if hi > lo else 0.01
    lo, hi = lo - pad, hi + pad
    bins = bins or int(np.clip(1.5 * np.sqrt(n), 50, 150))
    edges = np.linspace(lo, hi, bins + 1)
    counts = {
        s: np.histogram2d(target[finite], v[finite], bins=[edges, edges])[0].T
        for s, v in values.items()
    }
    norm = LogNorm(vmin=1, vmax=max(1.0, max(float(c.max()) for c in counts.values())))

    # Square cells for square (equal-aspect) panels: no gap before the colourbar.
    fig = _figure(3.7 * len(stages) + 1.1, 4.4)
    axes = fig.subplots(1, len(stages), sharex=True, sharey=True, squeeze=False)[0]
    mesh = None
    for ax, stage in zip(axes, stages, strict=True):
        mesh = ax.pcolormesh(
            edges, edges, np.ma.masked_equal(counts[stage], 0), norm=norm, cmap="viridis"
        )
        ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, ls="--")
        rmse = float(model.metrics.sel(band=ref, metric="rmse", stage=stage))
        ax.set_title(f"{_stage_label(model, stage)}\ntest RMSE {rmse:.4f}", fontsize=10)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.set_xlabel(f"reference {ref} reflectance")
        what = f"source {src}" if stage == "initial" else f"{stage} {ref}"
        ax.set_ylabel(f"{what} reflectance")
        ax.tick_params(labelleft=True)  # sharey hides them; each panel has its own label
    fig.colorbar(mesh, ax=list(axes), label="pixels per bin", shrink=0.85)
    fig.suptitle(
        f"{ref} (source {src}): {n} test-split pixels at the reference resolution; dashed: 1:1",
        fontsize=11,
    )
    return fig


def loss_curves(model: Harmoniser) -> Figure:
    """Training and validation loss against iterations, with the linear baseline's loss.

    The baseline is the linear model's loss on the same validation patches (a horizontal
    line): the network is worth its cost where its validation curve goes below it. With a
    variance head the loss is a Gaussian negative log-likelihood, which a linear model
    does not have, so the line is left out and the figure says why. A dotted line marks
    the iteration whose parameters were kept.

    Parameters
    ----------
    model : Harmoniser
        A fitted neural model (``calibnet``, ``convcalibnet`` or ``bcnet``).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    InputValueError
        The model has no training history (``linear`` models are fitted in closed form).

    Examples
    --------
    >>> from xharmonise import fit
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((200, 200), seed=0)
    >>> model = fit(pair.src, pair.ref, method="calibnet", patch_size=8, iterations=20,
    ...             batch_size=2, progress=False)
    >>> fig = loss_curves(model)
    >>> fig.axes[0].get_xlabel()
    'iteration'
    """
    h = model.history or {}
    if not h.get("iteration"):
        raise InputValueError(
            f"the {model.method} model has no training history ({model.method} models are "
            "fitted in closed form): loss curves exist for models fitted with "
            "method='calibnet', 'convcalibnet' or 'bcnet'"
        )
    it = np.asarray(h["iteration"], dtype=float)
    train = np.asarray(h["train_loss"], dtype=float)
    val = np.asarray(h["val_loss"], dtype=float)
    marker = "o" if len(it) <= 40 else None
    fig = _figure(7.5, 4.5)
    ax = fig.subplots()
    ax.plot(
        it, train, marker=marker, ms=4, color="#6a6a6a", label="training (mean since last check)"
    )
    ax.plot(it, val, marker=marker, ms=4, color=_STAGE_COLOURS["model"], label="validation")
    ref = h.get("reference_loss")
    if ref is not None:
        ax.axhline(
            ref,
            color=_STAGE_COLOURS["linear"],
            ls="--",
            label=f"linear baseline, validation ({ref:.4f})",
        )
    best = h.get("best_iteration")
    if best:
        ax.axvline(best, color="0.4", ls=":", label=f"kept parameters (iteration {best})")
    shown = np.concatenate([train, val, [ref] if ref is not None else []])
    shown = shown[np.isfinite(shown)]
    # A log axis shows the late, small improvements; the NLL of a variance head can be
    # negative, which only a linear axis can show.
    if shown.size and shown.min() > 0 and shown.max() / shown.min() > 10:
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    if model.variance:
        ax.set_ylabel("loss: Gaussian negative log-likelihood")
    else:
        ax.set_ylabel("loss: relative error |t − p| / (|t| + ε)")
    notes = []
    if ref is None and model.variance:
        lin = h.get("linear_val_relative_error")
        note = "No linear baseline line: the variance head's NLL is not comparable with"
        notes.append(
            note + " the baseline's relative error" + (f" ({lin:.4f})." if lin is not None else ".")
        )
    if len(it) < 3:
        notes.append(
            f"Only {len(it)} validation check(s): the training was shorter than a few "
            "evaluation intervals."
        )
    if notes:
        # Under the axes, where they can never hide a curve.
        fig.supxlabel("\n".join(notes), fontsize=8, color="0.3")
    # From iteration 0, so that a short run looks short.
    ax.set_xlim(0, float(it.max()) * 1.04)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3, which="both")
    seconds, device = h.get("seconds"), h.get("device")
    run = h.get("iterations_run", int(it[-1]))
    when = f" in {seconds:.0f} s" if seconds is not None else ""
    where = f" on {device}" if device else ""
    ax.set_title(f"{model.method} training: {run} iterations{when}{where}", fontsize=11)
    return fig


def metric_bars(model: Harmoniser) -> Figure:
    """The four test metrics as grouped bars: one group per band, one bar per stage.

    R² and explained variance below -1 (typical of the untouched source against the
    reference) are clipped at -1 and labelled with their value.

    Parameters
    ----------
    model : Harmoniser

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from xharmonise import fit
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((200, 200), seed=0)
    >>> model = fit(pair.src, pair.ref, method="linear", patch_size=8, progress=False)
    >>> [ax.get_title() for ax in metric_bars(model).axes][:2]
    ['RMSE (lower is better)', 'R² (higher is better)']
    """
    table = model.metrics
    stages = _stages(model)
    bands = [str(b) for b in table["band"].values]
    metrics = [str(m) for m in table["metric"].values]
    ncols = 2 if len(metrics) > 1 else 1
    nrows = int(np.ceil(len(metrics) / ncols))
    fig = _figure(max(6.0, 1.2 * len(bands) * ncols + 2.0), 3.2 * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    x = np.arange(len(bands))
    width = 0.8 / len(stages)
    for ax, metric in zip(axes, metrics, strict=False):
        name, better = _METRIC_LABELS.get(metric, (metric, ""))
        score = metric in ("r2", "explained_variance")
        lowest, clipped = 0.0, False
        for k, stage in enumerate(stages):
            v = np.asarray(table.sel(metric=metric, stage=stage).values, dtype=float)
            pos = x + (k - (len(stages) - 1) / 2) * width
            shown = np.maximum(v, _SCORE_FLOOR) if score else v
            ax.bar(
                pos, shown, width, color=_STAGE_COLOURS.get(stage), label=_stage_label(model, stage)
            )
            lowest = min(lowest, float(np.nanmin(shown)))
            for p, value in zip(pos, v, strict=True):
                if score and value < _SCORE_FLOOR:
                    clipped = True
                    ax.text(
                        p,
                        _SCORE_FLOOR + 0.04,
                        f"{value:.2g}",
                        rotation=90,
                        ha="center",
                        va="bottom",
                        fontsize=8,
                        fontweight="bold",
                    )
        ax.set_xticks(x, bands)
        title = f"{name} ({better})" if better else name
        if clipped:
            title += f"\nbars below {_SCORE_FLOOR:g} clipped, value written"
        ax.set_title(title, fontsize=10)
        ax.axhline(0, color="black", lw=0.6)
        if score:
            ax.set_ylim(min(lowest, 0.0) - 0.05, 1.05)
            ax.axhline(1, color="0.5", lw=0.6, ls=":")
        else:
            ax.set_ylabel("reflectance")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(stages), fontsize=9)
    fig.suptitle(
        f"test-split metrics per reference band ({model.patches.get('test', '?')} test patches)",
        fontsize=11,
    )
    return fig


def filters(model: Harmoniser) -> Figure:
    """BCNet's learned filters, one panel per band, at source resolution.

    Each panel shows a filter's weights over its footprint in metres (east right, north
    up); the red cross is its centroid, i.e. the estimated shift of the source relative
    to the reference (also in the title), and the dashed circle the initial Gaussian's
    σ (the reference MTF).

    Parameters
    ----------
    model : Harmoniser
        A ``bcnet`` model.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    InputValueError
        The model is not a ``bcnet`` model.

    Examples
    --------
    >>> from xharmonise import fit
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((200, 200), seed=0)
    >>> model = fit(pair.src, pair.ref, method="bcnet", patch_size=8, iterations=5,
    ...             batch_size=2, progress=False)
    >>> len([ax for ax in filters(model).axes if ax.get_label() != "<colorbar>"])
    4
    """
    if model.method != "bcnet":
        raise InputValueError(
            f"{model.method} models have no learned filters: fit with method='bcnet' to "
            "learn the MTF and registration filters"
        )
    k = model.filters
    shifts = _shift_estimates(model)
    px = model.src_pixel_size
    kx, ky = np.asarray(k["kx"].values), np.asarray(k["ky"].values)
    extent = (kx[0] - px / 2, kx[-1] + px / 2, ky[-1] - px / 2, ky[0] + px / 2)
    weights = np.asarray(k.values, dtype=np.float64)
    total = weights.sum(axis=(1, 2))
    # The marker is the centroid of the filter as drawn; model.shift may add back a shift
    # corrected before training, which the titles report.
    cx = np.einsum("cyx,x->c", weights, kx) / total
    cy = np.einsum("cyx,y->c", weights, ky) / total
    vmax = float(weights.max())
    n = k.sizes["band"]
    fig = _figure(2.9 * n + 1.0, 3.9)
    axes = fig.subplots(1, n, squeeze=False)[0]
    image = None
    for i, ax in enumerate(axes):
        band = str(k["band"].values[i])
        image = ax.imshow(
            weights[i],
            extent=extent,
            origin="upper",
            cmap="viridis",
            vmin=0,
            vmax=vmax,
            interpolation="nearest",
        )
        ax.axhline(0, color="white", lw=0.5, alpha=0.6)
        ax.axvline(0, color="white", lw=0.5, alpha=0.6)
        sigma_m = float(model.sigmas[i]) * px
        ax.add_patch(Circle((0, 0), sigma_m, fill=False, ec="white", ls="--", lw=0.8))
        ax.plot(cx[i], cy[i], marker="+", color="red", ms=12, mew=2)
        east, north = shifts.get("filter", np.stack([cx, cy], axis=1))[i]
        lines = [f"{band}: E {east:+.2f} m, N {north:+.2f} m"]
        if "phase_correlation" in shifts:
            pe, pn = shifts["phase_correlation"][i]
            lines.append(f"phase corr.: E {pe:+.2f}, N {pn:+.2f}")
            ax.plot(pe, pn, marker="x", color="white", ms=8, mew=1.5)
        ax.set_title("\n".join(lines), fontsize=9)
        ax.set_xlabel("east (m)")
        if i == 0:
            ax.set_ylabel("north (m)")
    fig.colorbar(image, ax=list(axes), label="filter weight", shrink=0.8)
    cross = "; ×: phase correlation" if "phase_correlation" in shifts else ""
    fig.suptitle(
        f"BCNet learned filters ({px:g} m source pixels); title: estimated shift of the "
        f"source; +: centroid{cross}; dashed circle: initial MTF σ",
        fontsize=10,
    )
    return fig


def _shift_estimates(model: Harmoniser) -> dict[str, np.ndarray]:
    """``model.shift`` as {estimate: (band, 2) east/north metres}; {} when there is none."""
    try:
        s = model.shift
    except AttributeError:
        return {}
    if "estimate" in s.dims:
        return {
            str(e): np.asarray(s.sel(estimate=e).transpose("band", "axis").values, dtype=float)
            for e in s["estimate"].values
        }
    # Older layout (band, axis): the BCNet filter centroids only.
    return {"filter": np.asarray(s.transpose("band", "axis").values, dtype=float)}


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


def _rgb_figure(c: _Crop) -> Figure:
    assert c.before is not None and c.after is not None
    idx, known = _rgb_indices(c.ref_names, c.src_names)
    before, after = c.before[idx], c.after[idx]
    lo, hi = _stretch(before, after)
    w, h = _panel_size(c)
    fig = _figure(max(2 * w + 0.4, 7.0), h + 0.9)  # wide enough for the titles
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
        f"{_where(c)}; one linear stretch for both images and all channels"
        + ("; grey: no-data" if nodata else ""),
        fontsize=9,
    )
    return fig


def _variance_figure(c: _Crop, band: str | int | None) -> Figure:
    assert c.variance is not None
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
    fig = _figure(max(w + (0.3 if wide else 1.4), 5.0), h + (1.8 if wide else 0.9))
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
    fig.suptitle(_where(c) + ("; grey: no-data" if nodata else ""), fontsize=9)
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
    c = _compute_crop(
        src, prediction, crop, scale=scale, offset=offset, need_src=True, need_variance=False
    )
    return _rgb_figure(c)


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
    c = _compute_crop(None, prediction, crop, scale=None, need_src=False, need_variance=True)
    return _variance_figure(c, band)


# --------------------------------------------------------------------------- report
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
margin:0;background:#fafafa;color:#1d1d1d;line-height:1.45}
main{max-width:1200px;margin:0 auto;padding:1.5rem 2rem 3rem}
h1{font-size:1.6rem;margin:0 0 .2rem}h2{font-size:1.25rem;margin:2.2rem 0 .6rem;
border-bottom:1px solid #ddd;padding-bottom:.2rem}
.meta,.note,figcaption{color:#555;font-size:.9rem}
.note{background:#fff7e0;border-left:4px solid #e0b000;padding:.5rem .8rem}
nav a{margin-right:1rem}
table{border-collapse:collapse;background:#fff;font-size:.9rem;margin:.4rem 0 1rem}
th,td{border:1px solid #ddd;padding:.25rem .6rem;text-align:right}
th{background:#f0f0f0}td.k,th.k{text-align:left}
table.kv td{text-align:left}table.kv td.k{font-weight:600;white-space:nowrap}
figure{margin:1rem 0 1.6rem;background:#fff;border:1px solid #e4e4e4;padding:.6rem}
figure img{max-width:100%;height:auto;display:block}
.native{overflow-x:auto}.native img{max-width:none}
"""


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # No "Software" text chunk: the PNG (and so the report) carries no URL or version.
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return buf.getvalue()


def _safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text)


def _version(pkg: str) -> str:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return "not installed"


def _kv_table(rows: Sequence[tuple[str, str]]) -> str:
    cells = "".join(
        f"<tr><td class='k'>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows
    )
    return f"<table class='kv'>{cells}</table>"


def _metrics_table(model: Harmoniser) -> str:
    table = model.metrics
    stages = _stages(model)
    metrics = [str(m) for m in table["metric"].values]
    head1 = "<th class='k' rowspan='2'>band</th>" + "".join(
        f"<th colspan='{len(stages)}'>{html.escape(_METRIC_LABELS.get(m, (m,))[0])}</th>"
        for m in metrics
    )
    head2 = "".join(f"<th>{html.escape(s)}</th>" for _ in metrics for s in stages)
    rows = []
    for band in table["band"].values:
        cells = [f"<td class='k'>{html.escape(str(band))}</td>"]
        for m in metrics:
            v = np.array([float(table.sel(band=band, metric=m, stage=s)) for s in stages])
            better_high = m in ("r2", "explained_variance")
            best = np.nanargmax(v) if better_high else np.nanargmin(np.abs(v))
            for j, value in enumerate(v):
                text = f"{value:.4f}"
                cells.append(f"<td><b>{text}</b></td>" if j == best else f"<td>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f"<table><thead><tr>{head1}</tr><tr>{head2}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _summary_rows(model: Harmoniser) -> list[tuple[str, str]]:
    p, h = model.patches, model.history or {}
    pairs = ", ".join(f"{s} → {r}" for s, r in zip(model.src_bands, model.ref_bands, strict=True))
    rows = [
        ("method", model.method + (" with variance head" if model.variance else "")),
        ("bands (source → reference)", pairs),
    ]
    try:
        px = model.src_pixel_size
        rows.append(
            ("resolution", f"×{model.factor}: source {px:g} m, reference {px * model.factor:g} m")
        )
    except (KeyError, IndexError, TypeError):
        rows.append(("resolution factor", f"×{model.factor}"))
    if p:
        rows.append(
            (
                "patches",
                f"{p.get('valid', '?')} valid of {p.get('total', '?')} ({p.get('nodata', 0)} "
                f"with no-data, {p.get('cloudy', 0)} cloudy); {p.get('train', '?')} train / "
                f"{p.get('test', '?')} test",
            )
        )
    if h.get("iteration"):
        seconds = h.get("seconds")
        rows.append(
            (
                "training",
                f"{h.get('iterations_run', h['iteration'][-1])} iterations, parameters of "
                f"iteration {h.get('best_iteration', '?')} kept"
                + (f", {seconds:.1f} s" if seconds is not None else ""),
            )
        )
        rows.append(("device", str(h.get("device", "unknown"))))
        rows.append(("best validation loss", f"{min(h['val_loss']):.5g}"))
        if h.get("linear_val_relative_error") is not None:
            rows.append(
                (
                    "linear baseline, validation relative error",
                    f"{h['linear_val_relative_error']:.5g}",
                )
            )
    else:
        rows.append(("training", "none: least squares in closed form (no iterations)"))
    names = {"filter": "BCNet filter centroids", "phase_correlation": "phase correlation"}
    for estimate, values in _shift_estimates(model).items():
        e, n = values.mean(axis=0)
        rows.append(
            (
                f"shift of the source ({names.get(estimate, estimate)}, band mean)",
                f"east {e:+.2f} m, north {n:+.2f} m",
            )
        )
    reg = getattr(model, "coregistration", None)
    if isinstance(reg, dict) and reg.get("applied"):
        rows.append(("co-registration", "the source was corrected by the shift before training"))
    if model.samples and "target" in model.samples:
        rows.append(("scatter-plot samples", f"{len(model.samples['target'])} test-split pixels"))
    return rows


def _provenance_rows(model: Harmoniser, src: Any, c: _Crop | None) -> list[tuple[str, str]]:
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()
    rows = [("report written (UTC)", now)]
    rows.append(
        (
            "software",
            ", ".join(
                f"{pkg} {_version(pkg)}"
                for pkg in ("xharmonise", "numpy", "xarray", "dask", "torch", "matplotlib")
            ),
        )
    )
    g = model.grid or {}
    if g.get("crs"):
        try:
            from pyproj import CRS

            crs = CRS.from_user_input(g["crs"])
            epsg = crs.to_epsg()
            rows.append(("training grid CRS", crs.name + (f" (EPSG:{epsg})" if epsg else "")))
        except Exception:  # a CRS pyproj cannot read is still worth showing raw
            rows.append(("training grid CRS", str(g["crs"])[:200]))
    if g.get("ref_transform") is not None:
        t = ", ".join(f"{v:.12g}" for v in g["ref_transform"])
        shape = " x ".join(str(v) for v in g.get("ref_shape", []))
        rows.append(("reference grid (transform; shape)", f"{t}; {shape}"))
    if np.issubdtype(np.dtype(model.src_dtype), np.integer):
        scaling = f"reflectance = DN × {model.src_scale:g} + {model.src_offset:g}"
    else:
        scaling = "none needed"
    rows.append(("source scaling", f"{scaling} (trained on {model.src_dtype})"))
    rows.append(
        ("reference MTF Gaussian σ (source pixels)", ", ".join(f"{s:.2f}" for s in model.sigmas))
    )
    if src is not None and c is not None:
        da_ = src if isinstance(src, xr.DataArray) else None
        what = f"{tuple(src.sizes.values()) if da_ is None else da_.shape}"
        if da_ is not None and da_.chunks:
            what += f", Dask chunks {tuple(ch[0] for ch in da_.chunks)}"
        rows.append(("image", what))
        rows.append(("image crop", _where(c)))
    return rows


def _figure_html(item: tuple[str, str, bytes], native: bool = False) -> str:
    name, caption, png = item
    data = base64.b64encode(png).decode("ascii")
    cls = " class='native'" if native else ""
    return (
        f"<figure{cls}><img src='data:image/png;base64,{data}' alt='{html.escape(name)}'>"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def report(
    model: Harmoniser,
    path: str | os.PathLike,
    *,
    src: xr.DataArray | xr.Dataset | None = None,
    prediction: xr.Dataset | None = None,
    crop: Sequence[slice] | None = None,
    title: str | None = None,
    scale: float | None = None,
    offset: float | None = None,
) -> Path:
    """Write a self-contained HTML report of a fitted model, and its figures as PNG.

    The report holds the model summary, the test metrics (table and bars), density
    scatter plots per band, the training curves (or a note that a linear model has
    none), BCNet's learned filters, and, given ``src``, a before/after colour crop at
    full resolution and the predictive variance map (models with a variance head),
    then the provenance. Images are embedded as ``data:`` URIs and the CSS is inline:
    the file opens offline and can be mailed as is. The same figures are written as
    ``<stem>_files/*.png`` next to it.

    Parameters
    ----------
    model : Harmoniser
        A fitted model.
    path : str or path-like
        The HTML file to write (replaced if it exists).
    src : xarray.DataArray, optional
        The source image (band, y, x), for the before/after crop. Dask-backed images are
        read under the crop only.
    prediction : xarray.Dataset, optional
        :func:`xharmonise.predict` of ``src`` (e.g. read back from Zarr); by default it
        is predicted lazily from ``src`` (for the crop only).
    crop : (slice, slice), optional
        Window (y, x) in pixels of ``src``; by default a centred window of at most
        512 x 512 pixels.
    title : str, optional
        Report title; by default the method.
    scale, offset : float, optional
        Reflectance = DN x scale + offset for an integer ``src`` without
        ``scale_factor``/``add_offset`` attributes; by default as the model was trained,
        as in :func:`xharmonise.predict`.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    InputValueError
        ``prediction`` without ``src``, or ``crop`` outside the image.
    GridError
        ``prediction`` is not on ``src``'s grid.
    BandMismatchError
        ``src`` and ``prediction`` bands cannot be matched.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from xharmonise import fit
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((200, 200), seed=0)
    >>> model = fit(pair.src, pair.ref, method="linear", patch_size=8, progress=False)
    >>> out = report(model, Path(tempfile.mkdtemp()) / "report.html", src=pair.src)
    >>> sorted(p.stem for p in out.with_name("report_files").iterdir())
    ['metrics', 'rgb_crop', 'scatter_B2', 'scatter_B3', 'scatter_B4', 'scatter_B8']
    """
    path = Path(path)
    if prediction is not None and src is None:
        raise InputValueError(
            "prediction= was given without src=: pass the source image it was computed "
            "from as well (src=..., prediction=xharmonise.predict(src, model))"
        )
    crop_data = None
    if src is not None:
        src_da = _as_dataarray(src, "the source")
        scale, offset = scaling_like_training(
            src_da, (model.src_dtype, model.src_scale, model.src_offset), scale=scale, offset=offset
        )
        origin = (0, 0)
        if prediction is None:
            from xharmonise.api import predict

            # Predict the window only (with a margin for models that look at neighbours):
            # a NumPy-backed src would otherwise be predicted whole.
            ny, nx = src_da.sizes["y"], src_da.sizes["x"]
            ys, xs = _resolve_crop((ny, nx), crop)
            m = _PREDICT_MARGIN
            outer = (
                slice(max(0, ys.start - m), min(ny, ys.stop + m)),
                slice(max(0, xs.start - m), min(nx, xs.stop + m)),
            )
            origin = (outer[0].start, outer[1].start)
            src_da = src_da.isel(y=outer[0], x=outer[1])
            prediction = predict(src_da, model, scale=scale, offset=offset)
            crop = (
                slice(ys.start - origin[0], ys.stop - origin[0]),
                slice(xs.start - origin[1], xs.stop - origin[1]),
            )
        has_var = isinstance(prediction, xr.Dataset) and "variance" in prediction
        crop_data = _compute_crop(
            src_da,
            prediction,
            crop,
            scale=scale,
            offset=offset,
            need_src=True,
            need_variance=has_var,
            origin=origin,
        )
    elif crop is not None:
        raise InputValueError("crop= needs src=: pass the image to crop")

    figures: dict[str, tuple[str, str, bytes]] = {}

    def add(name: str, caption: str, make: Any) -> None:
        fig = make()
        figures[name] = (name, caption, _png(fig))

    add(
        "metrics",
        "Test-split metrics per band for the untouched source (initial), the linear "
        "baseline and the model (paper Figures 3, 11, 14, 16).",
        lambda: metric_bars(model),
    )
    scatter_note = None
    if model.samples and "target" in model.samples:
        for band in model.ref_bands:
            add(
                f"scatter_{_safe_name(band)}",
                f"Reference band {band}.",
                lambda band=band: scatter_density(model, band),
            )
    else:
        scatter_note = (
            "This model holds no test-split samples (saved by an older xharmonise), so "
            "there are no scatter plots: fit it again to get them."
        )
    history_note = None
    if (model.history or {}).get("iteration"):
        baseline = (
            "the dashed line is the linear baseline's loss on the same validation patches"
            if model.history.get("reference_loss") is not None
            else "with a variance head the loss is a Gaussian NLL, which the linear "
            "baseline has no counterpart of"
        )
        add(
            "loss_curves",
            f"Training and validation loss; {baseline} (paper Figures 5, 6, 9).",
            lambda: loss_curves(model),
        )
    else:
        history_note = (
            f"No training history: {model.method} models are fitted by least squares in "
            "closed form, without iterations, so there are no loss curves."
        )
    if model.method == "bcnet":
        add(
            "filters",
            "BCNet's learned filters at source resolution: the centroid (+) estimates the "
            "shift of the source relative to the reference (paper Figure 10).",
            lambda: filters(model),
        )
    if crop_data is not None:
        add(
            "rgb_crop",
            "Before (source) and after (harmonised) at full resolution, one stretch for "
            "both: colours and brightness should move towards the reference while the "
            "detail stays.",
            lambda: _rgb_figure(crop_data),
        )
        if crop_data.variance is not None:
            add(
                "variance_map",
                "Predictive variance of the same window (log scale): clouds, shadows and "
                "changes between the dates stand out as low-confidence pixels.",
                lambda: _variance_figure(crop_data, None),
            )

    # Write the PNGs; stale figures of an earlier report (e.g. filters of another
    # method) are removed so the folder matches the HTML.
    files = path.with_name(f"{path.stem}_files")
    files.mkdir(parents=True, exist_ok=True)
    for old in files.glob("*.png"):
        if old.name.startswith(_FIGURE_PREFIXES):
            old.unlink()
    for name, _, png in figures.values():
        (files / f"{name}.png").write_bytes(png)

    heading = title or f"xharmonise report: {model.method}" + (
        " + variance" if model.variance else ""
    )
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(heading)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{html.escape(heading)}</h1>",
        f"<p class='meta'>{html.escape(repr(model))}<br>written {now}; figures also in "
        f"{html.escape(files.name)}/</p>",
        "<nav><a href='#model'>model</a><a href='#metrics'>metrics</a>"
        "<a href='#scatter'>scatter plots</a><a href='#training'>training</a>"
        + ("<a href='#filters'>filters</a>" if "filters" in figures else "")
        + "<a href='#image'>image</a><a href='#provenance'>provenance</a></nav>",
        "<h2 id='model'>Model</h2>",
        _kv_table(_summary_rows(model)),
        "<h2 id='metrics'>Test metrics</h2>",
        "<p>Reflectance units on the held-out test patches at the reference resolution; "
        "the best stage per band and metric is in bold.</p>",
        _metrics_table(model),
        _figure_html(figures["metrics"]),
        "<h2 id='scatter'>Density scatter plots</h2>",
        "<p>Each stage against the reference on the test split, at the reference "
        "resolution: points on the dashed 1:1 line agree with the reference; colour counts "
        "pixels per bin on a log scale (paper Figures 4, 12, 15, 17). Every kept pixel is "
        "counted, outliers included.</p>",
    ]
    if scatter_note:
        parts.append(f"<p class='note'>{html.escape(scatter_note)}</p>")
    parts += [_figure_html(v) for k, v in figures.items() if k.startswith("scatter_")]
    parts.append("<h2 id='training'>Training</h2>")
    if history_note:
        parts.append(f"<p class='note'>{html.escape(history_note)}</p>")
    else:
        parts.append(_figure_html(figures["loss_curves"]))
    if "filters" in figures:
        parts += ["<h2 id='filters'>Learned filters</h2>", _figure_html(figures["filters"])]
    parts.append("<h2 id='image'>Image</h2>")
    if crop_data is None:
        parts.append(
            "<p class='note'>No image was given: pass src= (and prediction=) to see a "
            "before/after crop and, with a variance head, the variance map.</p>"
        )
    else:
        parts.append(_figure_html(figures["rgb_crop"], native=True))
        if "variance_map" in figures:
            parts.append(_figure_html(figures["variance_map"], native=True))
        elif model.variance:
            parts.append(
                "<p class='note'>The prediction has no variance: predict with "
                "variance=True to see the variance map.</p>"
            )
    parts += [
        "<h2 id='provenance'>Provenance</h2>",
        _kv_table(_provenance_rows(model, src, crop_data)),
        "</main></body></html>",
    ]
    text = "\n".join(parts)

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
