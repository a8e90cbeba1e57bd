"""fit, predict and estimate_shift: the one place that knows the whole flow.

inputs -> reflectance -> phase-aligned grid (optionally co-registered) -> reference-
resolution reductions and patches (lazy until here) -> training (in memory, small) ->
Harmoniser -> lazy predict.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from typing import Any

import numpy as np
import xarray as xr

from xharmonise import arguments, checks, psf, sampling
from xharmonise import grid as _grid
from xharmonise.coregister import ShiftEstimate, estimate_on_grid
from xharmonise.errors import (
    BandMismatchError,
    CoregistrationError,
    DetailLossWarning,
    GridError,
    InputValueError,
)
from xharmonise.harmoniser import Harmoniser
from xharmonise.inference import map_pixels
from xharmonise.metrics import metric_table
from xharmonise.models.linear import apply_linear, fit_linear
from xharmonise.models.registry import MethodName
from xharmonise.scaling import (
    as_band_array,
    band_names,
    scaling_like_training,
    to_reflectance,
)

__all__ = ["estimate_shift", "fit", "predict"]

# MTF assumed for reference bands whose name is not a Sentinel-2 band: close to the mean
# of the 10 m bands, the closest guess for an unknown ~10 m sensor.
_DEFAULT_MTF = 0.26
# Source pixels the BCNet filter may reach beyond the MTF kernel (room to learn a shift).
_BCNET_EXTRA = 2


def _pair_bands(
    src: xr.DataArray, ref: xr.DataArray, bands: Mapping[str, str] | Sequence[str] | None
) -> tuple[xr.DataArray, xr.DataArray, list[str], list[str]]:
    src_names, ref_names = band_names(src), band_names(ref)
    bands = checks.mapping_or_names(bands, "bands")
    if bands is None:
        if len(src_names) != len(ref_names):
            raise BandMismatchError(
                f"the source has {len(src_names)} bands {src_names} and the reference "
                f"{len(ref_names)} {ref_names}: pass bands={{src_band: ref_band, ...}} to "
                "say which bands pair up"
            )
        return src, ref, src_names, ref_names
    if isinstance(bands, Mapping):
        pairs = list(bands.items())
    elif len(bands) == len(src_names):
        pairs = list(zip(src_names, bands, strict=True))
    else:
        raise BandMismatchError(
            f"bands= lists {len(bands)} reference bands for {len(src_names)} source bands "
            f"{src_names}: give one per source band, or a {{src_band: ref_band}} mapping"
        )
    unknown = [s for s, _ in pairs if s not in src_names] + [
        r for _, r in pairs if r not in ref_names
    ]
    if unknown:
        raise BandMismatchError(
            f"unknown band names {unknown} in bands=: the source has {src_names} and the "
            f"reference {ref_names}"
        )
    twice = sorted({r for _, r in pairs if [q for _, q in pairs].count(r) > 1})
    if twice:
        raise BandMismatchError(
            f"bands= pairs reference band(s) {twice} with several source bands: pair each "
            "reference band with one source band"
        )
    si = [src_names.index(s) for s, _ in pairs]
    ri = [ref_names.index(r) for _, r in pairs]
    return (
        src.isel(band=si),
        ref.isel(band=ri),
        [s for s, _ in pairs],
        [r for _, r in pairs],
    )


def _crop_mask(mask: xr.DataArray, ref: xr.DataArray, g: _grid.PairGrid) -> xr.DataArray:
    if (mask.sizes.get("y"), mask.sizes.get("x")) == (ref.sizes["y"], ref.sizes["x"]):
        same = all(
            d in mask.coords
            and np.asarray(mask[d].values).dtype.kind in "iuf"
            and np.allclose(mask[d].values, ref[d].values)
            for d in ("y", "x")
        )
        if same:
            return mask.isel(y=g.ref_rows, x=g.ref_cols)
    raise GridError(
        "the mask is not on the reference grid: give a (y, x) mask with the reference's "
        "shape and coordinates (e.g. mask.rio.reproject_match(ref, resampling=nearest))"
    )


# Surface reflectance lives in [0, 1]; bright clouds, snow and specular glints reach ~1.5
# and atmospheric correction can undershoot a little below 0. Far outside that, the
# scaling is wrong (typically DN not scaled).
_REFLECTANCE_RANGE = (-0.5, 1.5)


def _check_reflectance_range(coarse: sampling.Coarse) -> None:
    lo, hi = _REFLECTANCE_RANGE
    for name, values, arg in (
        ("source", coarse.src, "scale=(src_scale, None)"),
        ("reference", coarse.ref, "scale=(None, ref_scale)"),
    ):
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            continue
        p1, p99 = np.percentile(finite, [1, 99])
        if p1 < lo or p99 > hi:
            raise InputValueError(
                f"the {name} does not look like reflectance after scaling (1st-99th "
                f"percentiles {p1:.3g} to {p99:.3g}, expected within {lo} to {hi}): give its "
                f"DN scale with {arg}, e.g. 1e-4 for Pleiades/Sentinel-2 DN or 1/255 for "
                "8-bit images"
            )


def _sigmas(ref_names: Sequence[str], factor: int) -> list[float]:
    res = 10.0  # only the ratio matters: sigma in source-grid pixels
    return [
        psf.sigma_from_mtf(psf.S2_MTF.get(b.upper(), _DEFAULT_MTF), res, res / factor)
        for b in ref_names
    ]


def _prepare(
    src: xr.DataArray | xr.Dataset,
    ref: xr.DataArray | xr.Dataset,
    scale: float | tuple[float | None, float | None] | None,
    offset: float | tuple[float | None, float | None] | None,
    bands: Mapping[str, str] | Sequence[str] | None,
) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray, list[str], list[str], float, float]:
    """Reflectance of both inputs with their bands paired; also the raw source and the
    scale and offset that turned it into reflectance."""
    src_scale, ref_scale = checks.per_input(scale, "scale", positive=True, example="1e-4")
    src_offset, ref_offset = checks.per_input(offset, "offset", positive=False, example="-0.1")
    src_da = as_band_array(src, "the source")
    ref_da = as_band_array(ref, "the reference")
    src_r = to_reflectance(src_da, scale=src_scale, offset=src_offset, name="the source")
    ref_r = to_reflectance(ref_da, scale=ref_scale, offset=ref_offset, name="the reference")
    src_r, ref_r, src_names, ref_names = _pair_bands(src_r, ref_r, bands)
    used_scale = src_scale if src_scale is not None else src_da.attrs.get("scale_factor")
    used_offset = src_offset if src_offset is not None else src_da.attrs.get("add_offset")
    # to_reflectance checked the attributes: numbers (or arrays of one) when present.
    used_scale = 1.0 if used_scale is None else float(np.asarray(used_scale).reshape(()))
    used_offset = 0.0 if used_offset is None else float(np.asarray(used_offset).reshape(()))
    return src_da, src_r, ref_r, src_names, ref_names, used_scale, used_offset


def _estimate(
    src_r: xr.DataArray,
    ref_r: xr.DataArray,
    mask: xr.DataArray | None,
    g: _grid.PairGrid,
    ref_names: Sequence[str],
    **options: Any,
) -> ShiftEstimate:
    return estimate_on_grid(
        _grid.align_source(src_r, g),
        ref_r.isel(y=g.ref_rows, x=g.ref_cols),
        _crop_mask(mask, ref_r, g) if mask is not None else None,
        factor=g.factor,
        sigmas=_sigmas(ref_names, g.factor),
        bands=list(ref_names),
        **options,
    )


def estimate_shift(
    src: xr.DataArray | xr.Dataset,
    ref: xr.DataArray | xr.Dataset,
    *,
    mask: xr.DataArray | None = None,
    bands: Mapping[str, str] | Sequence[str] | None = None,
    scale: float | tuple[float | None, float | None] | None = None,
    offset: float | tuple[float | None, float | None] | None = None,
    window: int | None = None,
    max_windows: int = 64,
    max_shift: float = 4.0,
    min_windows: int = 3,
    seed: int = 0,
) -> ShiftEstimate:
    """Measure the sub-pixel shift of ``src`` relative to ``ref`` by phase correlation.

    The overlap is cut into windows of reference pixels. In each, the source degraded with
    the reference MTF is phase-correlated with the reference (scikit-image) and the
    estimate refined at the source resolution until the residual vanishes, which removes
    the under-reading of sub-pixel shifts that correlation of aggregated images suffers.
    Windows with no-data or masked cloud are skipped; the others are combined robustly, so
    unmasked clouds or changes in a few windows do not bend the result. Only the windows
    used are read from the source.

    Sign convention: the shift is the displacement of the source content relative to the
    reference, in CRS units (metres), east and north positive: what the reference sees at
    ``p`` the source shows at ``p + (east, north)``. ``fit(..., coregister=True)`` corrects
    it.

    Parameters
    ----------
    src : xarray.DataArray
        High-resolution source (band, y, x) with a CRS; a source at the reference
        resolution works too (factor 1).
    ref : xarray.DataArray
        Reference (band, y, x) with a CRS.
    mask : xarray.DataArray, optional
        Cloud mask on the reference grid (y, x), True or 1 = cloud; windows touching it
        are skipped.
    bands : mapping or sequence, optional
        Band pairing, as for :func:`fit`.
    scale, offset : float or (float, float), optional
        DN scale and reflectance offset of integer inputs without ``scale_factor`` /
        ``add_offset`` attributes, as for :func:`fit`.
    window : int, optional
        Window side in reference pixels; by default the largest of 64, 48, 32 and 24 that
        gives at least 16 windows.
    max_windows : int
        Measure at most this many windows (spread over the overlap in a seeded order).
    max_shift : float
        Largest shift searched, in reference pixels; windows reading more are rejected.
    min_windows : int
        Fewest agreeing windows accepted.
    seed : int
        Seed of the order in which windows are visited.

    Returns
    -------
    ShiftEstimate
        ``east``, ``north`` (CRS units) and ``east_px``, ``north_px`` (reference pixels),
        ``confidence`` (share of windows agreeing), ``std_error``, per-band shifts and the
        per-window table ``windows``.

    Raises
    ------
    CoregistrationError
        Too few usable windows, or windows that disagree.
    HarmoniseError
        A subclass naming the problem for any other bad input.

    Examples
    --------
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((600, 600), shift=(4.0, -3.0), seed=1)
    >>> est = estimate_shift(pair.src, pair.ref)
    >>> round(est.east), round(est.north)
    (4, -3)
    """
    arguments.shift_options(
        window=window,
        max_windows=max_windows,
        max_shift=max_shift,
        min_windows=min_windows,
        seed=seed,
    )
    mask = arguments.mask(mask)
    _, src_r, ref_r, _, ref_names, _, _ = _prepare(src, ref, scale, offset, bands)
    g = _grid.pair_grid(src_r, ref_r)
    return _estimate(
        src_r,
        ref_r,
        mask,
        g,
        ref_names,
        window=window,
        max_windows=max_windows,
        max_shift=max_shift,
        min_windows=min_windows,
        seed=seed,
    )


def fit(
    src: xr.DataArray | xr.Dataset,
    ref: xr.DataArray | xr.Dataset,
    *,
    method: MethodName = "calibnet",
    variance: bool = False,
    mask: xr.DataArray | None = None,
    bands: Mapping[str, str] | Sequence[str] | None = None,
    scale: float | tuple[float | None, float | None] | None = None,
    offset: float | tuple[float | None, float | None] | None = None,
    iterations: int | None = None,
    batch_size: int | None = None,
    patch_size: int = 32,
    test_fraction: float = 0.1,
    max_patches: int | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    coregister: bool | ShiftEstimate = False,
) -> Harmoniser:
    """Learn a per-pixel mapping that makes ``src`` reflectances consistent with ``ref``.

    Parameters
    ----------
    src : xarray.DataArray
        High-resolution source (band, y, x) with a CRS, e.g. Pleiades at 2 m; Dask-backed
        inputs are streamed, never loaded whole.
    ref : xarray.DataArray
        Reference (band, y, x) with a CRS, e.g. Sentinel-2 L2A at 10 m. Extra dimensions
        of length 1 (one date of a ``time`` dimension) are dropped from either input; a
        time series is refused (select one date, e.g. ``ref.isel(time=0)``).
    method : {"linear", "calibnet", "convcalibnet", "bcnet"}
        The mapping to learn.
    variance : bool
        Add a variance head trained with a Gaussian NLL (robust to unmasked clouds).
    mask : xarray.DataArray, optional
        Cloud mask on the reference grid (y, x), True or 1 = cloud.
    bands : mapping or sequence, optional
        Band pairing ``{src_band: ref_band}`` (or the reference band names in source
        order); by default bands pair in order and counts must match.
    scale : float or (float, float), optional
        DN scale for integer inputs without a ``scale_factor`` attribute: one value for
        both, or (source, reference).
    offset : float or (float, float), optional
        Reflectance offset (after scaling) for inputs without an ``add_offset``
        attribute, as above: reflectance = DN x scale + offset. Sentinel-2 L2A from
        processing baseline 04.00 on stores (reflectance x 10000 + 1000), i.e.
        ``scale=1e-4, offset=(None, -0.1)`` when the reference's metadata is lost.
    iterations, batch_size : int, optional
        Training budget and batch size in patches (neural methods). By default the paper's
        recipe on a GPU (5000 iterations of 100 patches) and a CPU budget sized to finish
        in minutes (see :mod:`xharmonise.training`).
    patch_size : int
        Patch side in reference pixels.
    test_fraction : float
        Share of valid patches held out for the metrics.
    max_patches : int, optional
        Use at most this many valid patches (after shuffling).
    seed : int
        Seed of the split and of training.
    device : str
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    progress : bool
        Show a progress bar while training.
    coregister : bool or ShiftEstimate
        Measure the shift of the source relative to the reference
        (:func:`estimate_shift`, default options) and correct it before sampling: the
        source is resampled (cubic) onto the corrected grid, so patches pair the same
        ground. A :class:`~xharmonise.coregister.ShiftEstimate` is applied as given. The
        model records the shift (``Harmoniser.coregistration``, ``Harmoniser.shift``) and
        :func:`predict` moves its output's georeferencing by it, without resampling.
        BCNet models measure the shift (without applying it) even when False, to set it
        beside their filter-centroid shift.

    Returns
    -------
    Harmoniser
        With ``metrics`` on the test split for the initial source, the linear baseline and
        the model.

    Raises
    ------
    HarmoniseError
        A subclass naming the problem for any bad input.

    Examples
    --------
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((400, 400), seed=0)
    >>> model = fit(pair.src, pair.ref, method="linear", patch_size=16)
    >>> model.method, model.factor
    ('linear', 5)
    """
    arguments.fit_options(
        method=method,
        variance=variance,
        iterations=iterations,
        batch_size=batch_size,
        patch_size=patch_size,
        test_fraction=test_fraction,
        max_patches=max_patches,
        seed=seed,
        device=device,
        progress=progress,
        coregister=coregister,
    )
    mask = arguments.mask(mask)
    src_da, src_r, ref_r, src_names, ref_names, src_scale, src_offset = _prepare(
        src, ref, scale, offset, bands
    )

    g = _grid.pair_grid(src_r, ref_r)
    estimate = coregister if isinstance(coregister, ShiftEstimate) else None
    if estimate is None and (coregister or method == "bcnet"):
        try:
            estimate = _estimate(src_r, ref_r, mask, g, ref_names, seed=seed)
        except CoregistrationError:
            if coregister:
                raise
            # BCNet only reports it beside its filter shift: no estimate, no report.
    applied = bool(coregister) and estimate is not None
    resampling = "bilinear"
    if applied:
        assert estimate is not None
        src_r = _grid.translate(src_r, -estimate.east, -estimate.north, crs=g.ref.crs)
        g = _grid.pair_grid(src_r, ref_r)
        # Cubic keeps more of the source's detail than bilinear through a sub-pixel move.
        resampling = "cubic"
    src_a = _grid.align_source(src_r, g, resampling=resampling)
    ref_c = ref_r.isel(y=g.ref_rows, x=g.ref_cols)
    mask_c = _crop_mask(mask, ref_r, g) if mask is not None else None
    sigmas = _sigmas(ref_names, g.factor)
    margin = psf.kernel_margin(max(sigmas), g.factor, extra=_BCNET_EXTRA)
    ring = math.ceil(margin / g.factor)

    coarse = sampling.reduce_to_reference(src_a, ref_c, mask_c, factor=g.factor, sigmas=sigmas)
    _check_reflectance_range(coarse)
    index = sampling.patch_validity(coarse, patch_size=patch_size, ring=ring)
    train_cells, test_cells = sampling.split_patches(
        index, test_fraction=test_fraction, seed=seed, max_patches=max_patches
    )
    n_pixels = len(train_cells) * patch_size**2
    if n_pixels < len(ref_names) + 1:
        raise InputValueError(
            f"only {len(train_cells)} training patch(es) of {patch_size} x {patch_size} pixels "
            f"({n_pixels} pixels) for a linear fit of {len(ref_names) + 1} terms per band: "
            "raise max_patches or patch_size, or give a larger clear overlap"
        )
    # Metrics use the held-out patches; a single valid patch can only be scored on itself.
    eval_cells = test_cells if len(test_cells) else train_cells
    train = sampling.gather(index, train_cells, coarse=coarse)
    evaluate = sampling.gather(index, eval_cells, coarse=coarse)

    linear = fit_linear(train.src, train.ref, axis=1)
    predictions: dict[str, np.ndarray] = {
        "initial": evaluate.src,
        "linear": apply_linear(linear, evaluate.src, axis=1),
    }
    history: dict[str, Any] = {}
    net = None
    test_variance = None
    if method == "linear":
        predictions["model"] = predictions["linear"]
    else:
        net, history, predictions["model"], test_variance = _train_network(
            method,
            variance=variance,
            index=index,
            cells=(train_cells, eval_cells),
            coarse=coarse,
            aligned=src_a,
            factor=g.factor,
            sigmas=sigmas,
            margin=margin,
            linear=linear,
            iterations=iterations,
            batch_size=batch_size,
            seed=seed,
            device=device,
            progress=progress,
        )

    target = np.moveaxis(evaluate.ref, 1, 0)
    table = metric_table(
        target, {k: np.moveaxis(v, 1, 0) for k, v in predictions.items()}, ref_names
    )
    counts = dict(index.counts, train=len(train_cells), test=len(test_cells))
    stages = dict(predictions, target=evaluate.ref)
    if test_variance is not None:
        stages["variance"] = test_variance
    samples = _sample_pixels(stages, seed=seed)
    return Harmoniser(
        method=method,
        src_bands=src_names,
        ref_bands=ref_names,
        factor=g.factor,
        sigmas=sigmas,
        src_scale=src_scale,
        src_offset=src_offset,
        src_dtype=str(src_da.dtype),
        linear=linear,
        metrics=table,
        history=history,
        grid=g.to_json(),
        patches=counts,
        variance=variance,
        net=net,
        samples=samples,
        coregistration=(None if estimate is None else dict(estimate.to_dict(), applied=applied)),
    )


# Test-split pixels kept in the model for its report's scatter plots: enough for smooth
# density plots, small enough to keep model files around a megabyte.
_MAX_SAMPLES = 20_000


def _sample_pixels(stages: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """A seeded random subset of (patch, band, y, x) arrays as (pixel, band) float32."""
    flat = {k: np.moveaxis(v, 1, -1).reshape(-1, v.shape[1]) for k, v in stages.items()}
    n = len(flat["target"])
    keep = np.random.default_rng(seed).permutation(n)[: min(n, _MAX_SAMPLES)]
    keep.sort()
    return {k: np.ascontiguousarray(v[keep], dtype=np.float32) for k, v in flat.items()}


def _train_network(
    method: str,
    *,
    variance: bool,
    index: sampling.PatchIndex,
    cells: tuple[np.ndarray, np.ndarray],
    coarse: sampling.Coarse,
    aligned: xr.DataArray,
    factor: int,
    sigmas: list[float],
    margin: int,
    linear: np.ndarray,
    iterations: int | None,
    batch_size: int | None,
    seed: int,
    device: str,
    progress: bool,
) -> tuple[Any, dict[str, Any], np.ndarray, np.ndarray | None]:
    """Train a neural model; returns it, its history, its prediction and variance (or None)
    on ``eval_cells``."""
    # torch is imported here only: the linear path and predict's NumPy path never need it.
    import torch

    from xharmonise.losses import relative_error
    from xharmonise.models import build_model
    from xharmonise.training import PatchSet, train

    train_cells, eval_cells = cells
    # Early stopping needs its own held-out patches: the test split only scores the result.
    n_val = max(1, round(0.1 * len(train_cells))) if len(train_cells) > 1 else 0
    val_cells, fit_cells = train_cells[:n_val], train_cells[n_val:]
    pixels = len(fit_cells) * index.patch_size**2
    if pixels < 2:
        raise InputValueError(
            f"only {pixels} pixel(s) to train on ({len(fit_cells)} patch of "
            f"{index.patch_size} x {index.patch_size} after holding out validation and test "
            "patches), which batch normalisation cannot use: raise max_patches or patch_size, "
            "or give a larger clear overlap"
        )
    full = method == "bcnet"

    def patches(c: np.ndarray) -> tuple[PatchSet, sampling.Patches]:
        p = sampling.gather(
            index, c, coarse=coarse, src=aligned if full else None, factor=factor, margin=margin
        )
        src = p.src_full if full else p.src
        assert src is not None, "gather cuts src_full when given the source"
        return PatchSet(src=src, ref=p.ref), p

    fit_set, _ = patches(fit_cells)
    val_set, val_p = patches(val_cells if n_val else fit_cells)
    test_set, _ = patches(eval_cells)
    reference = float(
        relative_error(
            torch.from_numpy(apply_linear(linear, val_p.src, axis=1)),
            torch.from_numpy(val_p.ref),
        )
    )
    net = build_model(
        method,
        fit_set.n_bands,
        variance=variance,
        factor=factor,
        sigmas=sigmas,
        margin=margin,
        seed=seed,
    )
    result = train(
        net,
        fit_set,
        val_set,
        iterations=iterations,
        batch_size=batch_size,
        seed=seed,
        device=device,
        progress=progress,
        reference_loss=None if variance else reference,
    )
    net = net.cpu().eval()
    with torch.inference_mode():
        pred, var = net(torch.from_numpy(test_set.src))
    history = dict(result.history)
    history.update(
        best_iteration=result.best_iteration,
        iterations_run=result.iterations_run,
        seconds=result.seconds,
        device=result.device,
        linear_val_relative_error=reference,
    )
    return net, history, pred.numpy(), None if var is None else var.numpy()


def predict(
    src: xr.DataArray | xr.Dataset,
    model: Harmoniser,
    *,
    with_variance: bool = True,
    scale: float | None = None,
    offset: float | None = None,
) -> xr.Dataset:
    """Apply a fitted mapping to ``src`` pixel by pixel, at its own resolution, lazily.

    Parameters
    ----------
    src : xarray.DataArray
        Source (band, y, x) with the bands the model was trained on.
    model : Harmoniser
        From :func:`fit` or :func:`xharmonise.load`.
    with_variance : bool
        Include the ``variance`` variable when the model has a variance head (trained with
        ``fit(..., variance=True)``); False leaves it out of the output.
    scale, offset : float, optional
        Reflectance = DN x scale + offset for an integer ``src`` without
        ``scale_factor``/``add_offset`` attributes; by default those the model was trained
        with, when it was trained on integer DN too.

    Returns
    -------
    xarray.Dataset
        ``prediction`` (and ``variance``), float32 (band, y, x) on ``src``'s grid and
        chunks, NaN at no-data, CRS and coordinates kept; band labels are the reference
        bands. Dask-backed (lazy) when ``src`` is. When the model was fitted with
        ``coregister=True``, the coordinates and the ``spatial_ref`` transform are moved
        by minus the measured shift, so the content lands where the reference sees it:
        a georeferencing change only, values untouched (apply such a model to the source
        it was fitted on, or to one with the same mis-registration).

    Examples
    --------
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((400, 400), seed=0)
    >>> model = fit(pair.src, pair.ref, method="linear", patch_size=16)
    >>> predict(pair.src, model)["prediction"].dtype
    dtype('float32')

    A co-registered model moves its output by the measured shift:

    >>> shifted = simulate_pair((600, 600), shift=(4.0, 0.0), seed=1)
    >>> model = fit(shifted.src, shifted.ref, method="linear", patch_size=16, coregister=True)
    >>> out = predict(shifted.src, model)
    >>> round(float(shifted.src.x[0] - out.x[0]))
    4
    """
    arguments.predict_options(model, with_variance=with_variance, scale=scale, offset=offset)
    src_da = as_band_array(src, "the source")
    names = band_names(src_da)
    if len(names) != model.n_bands:
        raise BandMismatchError(
            f"the model was trained on {model.n_bands} source bands {model.src_bands}, the "
            f"image has {len(names)} {names}: select them, e.g. src.sel(band={model.src_bands})"
        )
    named = [n for n in names if not n.isdigit()]
    if named and names != list(model.src_bands) and all(not b.isdigit() for b in model.src_bands):
        raise BandMismatchError(
            f"the model was trained on source bands {model.src_bands}, the image has {names}: "
            f"select and order them, e.g. src.sel(band={model.src_bands})"
        )
    scale, offset = scaling_like_training(
        src_da, (model.src_dtype, model.src_scale, model.src_offset), scale=scale, offset=offset
    )
    src_r = to_reflectance(src_da, scale=scale, offset=offset, name="the source")
    if model.method == "convcalibnet":
        warnings.warn(
            "ConvCalibNet learned spatial effects (MTF, mis-registration) at the reference "
            "resolution and alters the source's full-resolution detail; use method='bcnet' "
            "to keep it",
            DetailLossWarning,
            stacklevel=2,
        )
    out = map_pixels(src_r.data, model)
    n = model.n_bands
    coords = {k: v for k, v in src_r.coords.items() if "band" not in v.dims}
    coords["band"] = list(model.ref_bands)
    ds = xr.Dataset(
        {"prediction": (("band", "y", "x"), out[:n])},
        coords=coords,
    )
    if with_variance and model.variance:
        ds["variance"] = (("band", "y", "x"), out[n:])
    ds["prediction"].attrs.update(long_name="harmonised reflectance", units="1")
    if "variance" in ds:
        ds["variance"].attrs.update(long_name="predictive variance", units="1")
    ds.attrs.update(
        method=model.method,
        source_bands=list(model.src_bands),
        reference_bands=list(model.ref_bands),
        xharmonise_version=version("xharmonise"),
    )
    reg = model.coregistration
    if reg is not None and reg.get("applied"):
        # The model learned on the corrected source: put the output where the reference
        # sees its content. A georeferencing change only; the values are not resampled.
        ds = _grid.translate(ds, -reg["east"], -reg["north"], crs=model.grid.get("crs"))
        ds.attrs["coregistration_shift"] = [reg["east"], reg["north"]]
    if "spatial_ref" in ds.coords:
        for name in ds.data_vars:
            ds[name].attrs["grid_mapping"] = "spatial_ref"
    return ds
