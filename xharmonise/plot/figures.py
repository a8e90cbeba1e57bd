"""Figures of a fitted model: density scatter plots, training curves, metric bars and
BCNet's learned filters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Circle
from matplotlib.ticker import MaxNLocator

from xharmonise.errors import BandMismatchError, InputValueError
from xharmonise.models.registry import METHODS, Method, method

if TYPE_CHECKING:
    from xharmonise.harmoniser import Harmoniser

__all__ = [
    "DPI",
    "METRIC_LABELS",
    "filters",
    "loss_curves",
    "metric_bars",
    "new_figure",
    "reliability",
    "scatter_density",
    "shift_estimates",
    "shown_stages",
]

# One colour per stage everywhere (bars, legends), so the eye learns it once.
_STAGE_COLOURS = {"initial": "#9a9a9a", "linear": "#3b75af", "model": "#d1495b"}

#: Title and reading hint of each metric of ``Harmoniser.metrics``.
METRIC_LABELS = {
    "rmse": ("RMSE", "lower is better"),
    "r2": ("R²", "higher is better"),
    "explained_variance": ("explained variance", "higher is better"),
    "max_error": ("max error", "lower is better"),
}

# R² and explained variance of the untouched source can be far below zero (a biased,
# hazy TOA image); below this the bars are clipped and labelled with their value so
# the useful range (0..1) stays readable.
_SCORE_FLOOR = -1.0

#: Resolution of every figure, in dots per inch (and of the PNG files written from them).
DPI = 100


def new_figure(width: float, height: float) -> Figure:
    """An empty figure of ``width`` x ``height`` inches at :data:`DPI`, drawn by Agg.

    Built without pyplot, so nothing enters pyplot's global state and no GUI backend is
    selected.
    """
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # Agg explicitly: rendering never depends on a display
    return fig


def shown_stages(model: Harmoniser) -> list[str]:
    """The metric stages worth showing: ``initial``, ``linear``, ``model`` as measured.

    A model without a network has its ``model`` stage equal to the linear baseline, so
    it is left out rather than suggest a difference that does not exist.
    """
    stages = [str(s) for s in model.metrics["stage"].values]
    if not method(model.method).neural and "linear" in stages and "model" in stages:
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
    stages = [s for s in shown_stages(model) if s in samples]
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
    fig = new_figure(3.7 * len(stages) + 1.1, 4.4)
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
    assert mesh is not None, "subplots made at least one panel"
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
    variance head the loss is a Student-t negative log-likelihood, which a linear model
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
            f"{_methods_where(lambda m: m.neural)}"
        )
    it = np.asarray(h["iteration"], dtype=float)
    train = np.asarray(h["train_loss"], dtype=float)
    val = np.asarray(h["val_loss"], dtype=float)
    marker = "o" if len(it) <= 40 else None
    fig = new_figure(7.5, 4.5)
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
        ax.set_ylabel("loss: Student-t negative log-likelihood")
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
    stages = shown_stages(model)
    bands = [str(b) for b in table["band"].values]
    metrics = [str(m) for m in table["metric"].values]
    ncols = 2 if len(metrics) > 1 else 1
    nrows = int(np.ceil(len(metrics) / ncols))
    fig = new_figure(max(6.0, 1.2 * len(bands) * ncols + 2.0), 3.2 * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    x = np.arange(len(bands))
    width = 0.8 / len(stages)
    for ax, metric in zip(axes, metrics, strict=False):
        name, better = METRIC_LABELS.get(metric, (metric, ""))
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
        A model with learned filters (``bcnet``).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    InputValueError
        The model has no learned filters.

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
    if not method(model.method).has_filters:
        raise InputValueError(
            f"{model.method} models have no learned filters: fit with "
            f"{_methods_where(lambda m: m.has_filters)} to learn the MTF and registration "
            "filters"
        )
    k = model.filters
    shifts = shift_estimates(model)
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
    fig = new_figure(2.9 * n + 1.0, 3.9)
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
    assert image is not None, "subplots made at least one panel"
    fig.colorbar(image, ax=list(axes), label="filter weight", shrink=0.8)
    cross = "; ×: phase correlation" if "phase_correlation" in shifts else ""
    fig.suptitle(
        f"BCNet learned filters ({px:g} m source pixels); title: estimated shift of the "
        f"source; +: centroid{cross}; dashed circle: initial MTF σ",
        fontsize=10,
    )
    return fig


def _methods_where(has: Callable[[Method], bool]) -> str:
    """``method='a', 'b' or 'c'``: the registry's methods that ``has`` holds for."""
    names = [f"'{m.name}'" for m in METHODS.values() if has(m)]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    return f"method={listed}"


def shift_estimates(model: Harmoniser) -> dict[str, np.ndarray]:
    """``model.shift`` as ``{estimate: (band, 2) east/north metres}``; {} when there is none.

    The estimates are ``filter`` (learned filters' centroids) and ``phase_correlation``
    (measured at fit time), as the model holds them.
    """
    try:
        s = model.shift
    except AttributeError:
        return {}
    return {
        str(e): np.asarray(s.sel(estimate=e).transpose("band", "axis").values, dtype=float)
        for e in s["estimate"].values
    }


def reliability(model: Harmoniser) -> Figure:
    """The reliability diagram of σ²: observed against expected coverage, per band.

    For each band, the share of the test-split pixels whose error lies within ±1σ,
    ±1.96σ and ±2.58σ (expected 0.683, 0.950, 0.990 for a calibrated Gaussian), before
    and after the calibration (``model.calibration_scores``): points on the diagonal are
    calibrated, below it σ is too small, above it too large.

    Parameters
    ----------
    model : Harmoniser
        A model with calibration diagnostics.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    InputValueError
        A model saved before calibration existed (no diagnostics).

    Examples
    --------
    >>> from xharmonise import fit
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((200, 200), seed=0)
    >>> model = fit(pair.src, pair.ref, method="linear", patch_size=8, progress=False)
    >>> [ax.get_title() for ax in reliability(model).axes]
    ['B2', 'B3', 'B4', 'B8']
    """
    from xharmonise.calibration import LEVELS

    scores = model.calibration_scores
    if scores is None:
        raise InputValueError(
            "this model holds no calibration diagnostics (saved before xharmonise "
            "calibrated σ²): fit it again to get them"
        )
    bands = [str(b) for b in scores["band"].values]
    expected = np.array(list(LEVELS.values()))
    measures = [f"coverage_{k:g}" for k in LEVELS]
    fig = new_figure(max(4.0, 2.6 * len(bands)), 3.0)
    axes = fig.subplots(1, len(bands), squeeze=False, sharey=True).ravel()
    lo = 0.5
    for ax, band in zip(axes, bands, strict=True):
        ax.plot([lo, 1], [lo, 1], color="0.6", ls="--", lw=1, label="calibrated")
        for stage, colour, marker in (("before", "#d95f02", "o"), ("after", "#1b9e77", "s")):
            observed = np.array(
                [float(scores.sel(band=band, measure=m, stage=stage)) for m in measures]
            )
            ax.plot(expected, observed, marker=marker, color=colour, label=stage)
            lo = min(lo, float(np.nanmin(observed, initial=lo)))
        ax.set_title(band, fontsize=10)
        ax.set_xlabel("expected coverage")
        ax.set_aspect("equal", adjustable="box")
    for ax in axes:
        ax.set_xlim(lo - 0.02, 1.005)
        ax.set_ylim(lo - 0.02, 1.005)
    axes[0].set_ylabel("observed coverage (test split)")
    axes[-1].legend(fontsize=8, loc="lower right")
    return fig
