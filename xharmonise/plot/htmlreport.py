"""The self-contained HTML report of a fitted model, and its figures as PNG files."""

from __future__ import annotations

import base64
import datetime
import html
import io
import os
import tempfile
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from xharmonise.checks import type_name
from xharmonise.errors import InputTypeError, InputValueError
from xharmonise.models.registry import method
from xharmonise.plot.crops import Crop, compute_crop, draw_applicability, draw_rgb, draw_variance
from xharmonise.plot.figures import (
    DPI,
    METRIC_LABELS,
    filters,
    loss_curves,
    metric_bars,
    reliability,
    scatter_density,
    shift_estimates,
    shown_stages,
)
from xharmonise.plot.refdates import dates_section
from xharmonise.scaling import as_band_array, scaling_like_training

if TYPE_CHECKING:
    from xharmonise.harmoniser import Harmoniser

__all__ = ["report"]

# Files report() writes into its folder; only these are replaced on a rerun.
_FIGURE_PREFIXES = (
    "metrics",
    "scatter_",
    "loss_curves",
    "filters",
    "rgb_crop",
    "variance_map",
    "reliability",
    "applicability_map",
)

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
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
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
    stages = shown_stages(model)
    metrics = [str(m) for m in table["metric"].values]
    head1 = "<th class='k' rowspan='2'>band</th>" + "".join(
        f"<th colspan='{len(stages)}'>{html.escape(METRIC_LABELS.get(m, (m,))[0])}</th>"
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


def _calibration_table(scores: xr.DataArray) -> str:
    """Coverage and NLL per band, before and after the calibration, with the expected
    coverage in the header."""
    from xharmonise.calibration import LEVELS

    measures = [str(m) for m in scores["measure"].values]
    stages = [str(s) for s in scores["stage"].values]

    def label(m: str) -> str:
        if m.startswith("coverage_"):
            k = float(m.split("_", 1)[1])
            return f"±{k:g}σ (expect {LEVELS.get(k, float('nan')):.3f})"
        return "mean NLL" if m == "nll" else m

    head1 = "<th class='k' rowspan='2'>band</th>" + "".join(
        f"<th colspan='{len(stages)}'>{html.escape(label(m))}</th>" for m in measures
    )
    head2 = "".join(f"<th>{html.escape(s)}</th>" for _ in measures for s in stages)
    rows = []
    for band in scores["band"].values:
        cells = [f"<td class='k'>{html.escape(str(band))}</td>"]
        for m in measures:
            for st in stages:
                cells.append(f"<td>{float(scores.sel(band=band, measure=m, stage=st)):.3f}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f"<table><thead><tr>{head1}</tr><tr>{head2}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _uncertainty_rows(model: Harmoniser) -> list[tuple[str, str]]:
    cal, dom = model.calibration, model.domain
    kind = model.variance_kind
    if cal is None:
        sigma = (
            "the variance head's own, uncalibrated (saved before calibration existed)"
            if kind == "head"
            else "none (saved before calibration existed): fit again for an empirical σ²"
        )
    elif cal.skipped:
        sigma = f"the variance head's own, uncalibrated: {cal.skipped}"
    else:
        what = "the variance head's σ mapped" if cal.kind == "head" else "empirical, by brightness"
        sigma = f"{what}, calibrated on {cal.patches} validation patches ({cal.pixels} pixels)"
    if dom is None:
        domain = (
            "none: this model was saved before applicability existed; fit it again to measure it"
        )
    else:
        domain = (
            f"a {dom.components}-component Gaussian mixture of {dom.pixels} source pixels "
            f"from {dom.patches} training patches"
        )
    return [("σ²", sigma), ("applicability domain", domain)]


def _sampling_text(sampling: dict[str, Any] | None) -> str:
    """fit's sampling options in words, or why they are not known."""
    if sampling is None:
        # evaluate falls back to fit's defaults for such a model: say so, since its test
        # split is then fit's only if the fit used them too.
        return (
            "unknown: this model was saved before fit recorded its sampling options; "
            "xharmonise.evaluate assumes fit's defaults unless given them"
        )
    cap = sampling["max_patches"]
    return (
        f"patches of {sampling['patch_size']} reference pixels, "
        f"{sampling['test_fraction']:g} held out for testing, "
        f"{'no cap' if cap is None else f'at most {cap} patches'}, seed {sampling['seed']}"
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
    rows.append(("patch sampling", _sampling_text(model.sampling)))
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
    for estimate, values in shift_estimates(model).items():
        e, n = values.mean(axis=0)
        rows.append(
            (
                f"shift of the source ({names.get(estimate, estimate)}, band mean)",
                f"east {e:+.2f} m, north {n:+.2f} m",
            )
        )
    if model.applied_shift is not None:
        east, north = model.applied_shift
        rows.append(
            (
                "co-registration",
                f"the source was corrected by the shift (east {east:+.2f} m, north "
                f"{north:+.2f} m) before training",
            )
        )
    if model.samples and "target" in model.samples:
        rows.append(("scatter-plot samples", f"{len(model.samples['target'])} test-split pixels"))
    return rows + _uncertainty_rows(model)


def _provenance_rows(model: Harmoniser, src: Any, c: Crop | None) -> list[tuple[str, str]]:
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
    ref = model.grid.ref
    if ref.crs is not None:
        epsg = ref.crs.epsg
        rows.append(("training grid CRS", ref.crs.proj.name + (f" (EPSG:{epsg})" if epsg else "")))
    t = ", ".join(f"{v:.12g}" for v in list(ref.affine)[:6])
    shape = " x ".join(str(v) for v in tuple(ref.shape))
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
        rows.append(("image crop", c.describe()))
    return rows


def _figure_html(item: tuple[str, str, bytes], native: bool = False) -> str:
    name, caption, png = item
    data = base64.b64encode(png).decode("ascii")
    cls = " class='native'" if native else ""
    return (
        f"<figure{cls}><img src='data:image/png;base64,{data}' alt='{html.escape(name)}'>"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def report_destination(path: Any) -> Path:
    """The report's path, refused before any work when a report cannot be written there.

    Examples
    --------
    >>> report_destination("/etc/hostname/report.html")
    Traceback (most recent call last):
        ...
    xharmonise.errors.InputValueError: cannot write /etc/hostname/report.html: ...
    """
    if not isinstance(path, str | os.PathLike) or not isinstance(os.fspath(path), str):
        raise InputTypeError(
            f"path={path!r} is a {type_name(path)}: give the report's file path as a str or "
            "pathlib.Path, e.g. 'report.html'"
        )
    out = Path(path)
    if out.is_dir() or not out.name:
        raise InputValueError(f"{out} is a folder: give a file path, e.g. {out / 'report.html'}")
    blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise InputValueError(
            f"cannot write {out}: {blocking} is a file, not a folder: choose another path"
        )
    return out


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

    The report holds the model summary, for a model fitted on a reference time series
    the dates it chose and used (with their training pixels) and the held-out RMSE per
    date, the test metrics (table and bars), density scatter plots per band, the
    training curves (or a note that a linear model has none), the learned filters
    (BCNet), the calibration of σ² (coverage and NLL before and after, and a reliability
    diagram: observed against expected coverage per band), and, given ``src`` and its
    ``prediction``, a before/after colour crop at full resolution, the predictive
    variance map (a prediction with a variance) and the applicability map (a prediction
    with ``with_applicability=True``), then the provenance. The report never predicts: it
    draws the ``prediction`` it is given, and computes only the window it shows. Images
    are embedded as ``data:`` URIs and the CSS is inline: the file opens offline and can
    be mailed as is. The same figures are written as ``<stem>_files/*.png`` next to it.

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
        :func:`xharmonise.predict` of ``src``, lazy or read back from Zarr; given with
        ``src`` and only then.
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
        ``src`` without ``prediction`` or the other way round, or ``crop`` outside the
        image.
    GridError
        ``prediction`` is not on ``src``'s grid.
    BandMismatchError
        ``src`` and ``prediction`` bands cannot be matched.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from xharmonise import fit, predict
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((200, 200), seed=0)
    >>> model = fit(pair.src, pair.ref, method="linear", patch_size=8, progress=False)
    >>> out = report(model, Path(tempfile.mkdtemp()) / "report.html", src=pair.src,
    ...              prediction=predict(pair.src, model))
    >>> sorted(p.stem for p in out.with_name("report_files").iterdir())
    ['metrics', 'reliability', 'rgb_crop', 'scatter_B2', 'scatter_B3', 'scatter_B4', 'scatter_B8']
    """
    path = report_destination(path)
    if prediction is not None and src is None:
        raise InputValueError(
            "prediction= was given without src=: pass the source image it was computed "
            "from as well (src=..., prediction=xharmonise.predict(src, model))"
        )
    if src is not None and prediction is None:
        raise InputValueError(
            "src= was given without prediction=: pass its prediction as well, "
            "prediction=xharmonise.predict(src, model) (lazy on a Dask-backed src: the "
            "report computes the window it draws only)"
        )
    if crop is not None and src is None:
        raise InputValueError("crop= needs src= and prediction=: pass the image to crop")
    crop_data = None
    if src is not None and prediction is not None:
        src_da = as_band_array(src, "the source")
        scale, offset = scaling_like_training(
            src_da, (model.src_dtype, model.src_scale, model.src_offset), scale=scale, offset=offset
        )
        crop_data = compute_crop(
            src_da,
            prediction,
            crop,
            scale=scale,
            offset=offset,
            need_src=True,
            # The map shows a head's σ² (clouds, changes); an empirical σ² (#15, models
            # without a head) is a function of brightness alone, which the crop shows.
            need_variance=(
                model.variance and isinstance(prediction, xr.Dataset) and "variance" in prediction
            ),
            need_applicability=(
                isinstance(prediction, xr.Dataset) and "applicability" in prediction
            ),
        )

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
            else "with a variance head the loss is a Student-t NLL, which the linear "
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
    if model.calibration_scores is not None:
        add(
            "reliability",
            "Reliability of σ²: the share of test-split pixels whose error lies within "
            "±1σ, ±1.96σ and ±2.58σ against the share a calibrated Gaussian puts there, "
            "before and after the calibration; on the dashed diagonal σ means what it says, "
            "below it σ is too small, above it too large.",
            lambda: reliability(model),
        )
    if method(model.method).has_filters:
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
            lambda: draw_rgb(crop_data),
        )
        if crop_data.variance is not None:
            add(
                "variance_map",
                "Predictive variance of the same window (log scale): clouds, shadows and "
                "changes between the dates stand out as low-confidence pixels.",
                lambda: draw_variance(crop_data),
            )
        if crop_data.applicability is not None:
            add(
                "applicability_map",
                "Applicability of the same window: the share of the training pixels lying at "
                "least as far from the training domain (1 typical, small unusual); outlined "
                "in red, pixels outside it (below 0.001), where the mapping extrapolates.",
                lambda: draw_applicability(crop_data),
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
    dates_html = dates_section(model)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(heading)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{html.escape(heading)}</h1>",
        f"<p class='meta'>{html.escape(repr(model))}<br>written {now}; figures also in "
        f"{html.escape(files.name)}/</p>",
        "<nav><a href='#model'>model</a>"
        + ("<a href='#dates'>reference dates</a>" if dates_html else "")
        + "<a href='#metrics'>metrics</a>"
        "<a href='#scatter'>scatter plots</a><a href='#training'>training</a>"
        + ("<a href='#filters'>filters</a>" if "filters" in figures else "")
        + "<a href='#calibration'>calibration</a>"
        + "<a href='#image'>image</a><a href='#provenance'>provenance</a></nav>",
        "<h2 id='model'>Model</h2>",
        _kv_table(_summary_rows(model)),
        *([dates_html] if dates_html else []),
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
    parts.append("<h2 id='calibration'>Calibration of σ²</h2>")
    if model.calibration_scores is None:
        parts.append(
            "<p class='note'>This model holds no calibration diagnostics: it was saved "
            "before xharmonise calibrated σ². Fit it again to get them.</p>"
        )
    else:
        parts += [
            "<p>Coverage of ±kσ and mean Gaussian negative log-likelihood of σ² on the "
            "held-out test patches at the reference resolution, before and after the "
            "calibration fitted on the validation patches.</p>",
            _calibration_table(model.calibration_scores),
            _figure_html(figures["reliability"]),
        ]
    parts.append("<h2 id='image'>Image</h2>")
    if crop_data is None:
        parts.append(
            "<p class='note'>No image was given: pass src= and prediction= to see a "
            "before/after crop and, with a variance head, the variance map.</p>"
        )
    else:
        parts.append(_figure_html(figures["rgb_crop"], native=True))
        if "variance_map" in figures:
            parts.append(_figure_html(figures["variance_map"], native=True))
        elif model.variance:
            parts.append(
                "<p class='note'>The prediction has no variance: predict with "
                "with_variance=True to see the variance map.</p>"
            )
        if "applicability_map" in figures:
            parts.append(_figure_html(figures["applicability_map"], native=True))
        elif model.domain is not None:
            parts.append(
                "<p class='note'>The prediction has no applicability: predict with "
                "with_applicability=True to see where the model applies.</p>"
            )
        else:
            parts.append(
                "<p class='note'>No applicability map: this model was saved before "
                "applicability existed; fit it again to measure it.</p>"
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
