"""fit, predict, evaluate and estimate_shift: the public flow, checked first, then run by
stages.

``fit`` checks every argument (:mod:`xharmonise.arguments`) before any pixel is read, then
runs the stages of :mod:`xharmonise.stages`: inputs -> reflectance -> phase-aligned grid
(optionally co-registered) -> reference-resolution reductions and patches (lazy until
here) -> training (in memory, small) -> evaluation -> Harmoniser. ``predict`` applies the
mapping lazily (:mod:`xharmonise.inference`). ``evaluate`` scores a fitted model on
another pair with the fit's own stages (:mod:`xharmonise.evaluation`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from xharmonise import arguments, evaluation, stages
from xharmonise import grid as _grid
from xharmonise.applicability import OUT_OF_DOMAIN, WARN_SHARE, Domain, out_of_domain_share
from xharmonise.calibration import Calibration, source_brightness
from xharmonise.dates import DEFAULT_MAX_DAYS
from xharmonise.errors import BandMismatchError, DetailLossWarning, OutOfDomainWarning
from xharmonise.harmoniser import Harmoniser
from xharmonise.inference import map_pixels
from xharmonise.models.registry import MethodName
from xharmonise.models.registry import method as method_spec
from xharmonise.records import ShiftEstimate
from xharmonise.scaling import (
    as_band_array,
    band_names,
    scaling_like_training,
    to_reflectance,
)

__all__ = ["estimate_shift", "evaluate", "fit", "predict"]


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
    paired = stages.reflectance_pair(src, ref, scale=scale, offset=offset, bands=bands)
    # A reference series is measured against the image fit would learn from.
    paired, mask, _ = stages.single_reference(paired, mask)
    grid = _grid.pair_grid(paired.src, paired.ref)
    stages.warn_unknown_bands(paired.ref_bands, stacklevel=2)
    return stages.measure_shift(
        paired,
        grid,
        mask,
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
    src_time: Any = None,
    dates: str | Sequence[Any] = "auto",
    max_days: float = DEFAULT_MAX_DAYS,
) -> Harmoniser:
    """Learn a per-pixel mapping that makes ``src`` reflectances consistent with ``ref``.

    Parameters
    ----------
    src : xarray.DataArray
        High-resolution source (band, y, x) with a CRS, e.g. Pleiades at 2 m; Dask-backed
        inputs are streamed, never loaded whole.
    ref : xarray.DataArray or xarray.Dataset
        Reference with a CRS, e.g. Sentinel-2 L2A at 10 m: (band, y, x), a time series
        (time, band, y, x) as stackstac gives it, or a Dataset with one variable per band
        as odc-stac's ``load`` gives it (dims (time, y, x); variables named ``B02``...,
        ``red``/``nir``..., or chosen with ``bands=``). A series is reduced to the dates
        that serve the source (``dates=``); extra dimensions of length 1 are dropped.
    method : {"linear", "calibnet", "convcalibnet", "bcnet"}
        The mapping to learn.
    variance : bool
        Add a variance head trained with a Student-t NLL (robust to unmasked clouds); the
        neural methods only (``linear`` has none and refuses it).
    mask : xarray.DataArray, optional
        Cloud mask on the reference grid (y, x), True or 1 = cloud; (time, y, x) with the
        reference's dates for a time series. Masked pixels are left out of the fit and
        its metrics; a patch is used while a quarter of its pixels are clear.
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
        model records the shift (``Harmoniser.shift_estimate``,
        ``Harmoniser.applied_shift``, ``Harmoniser.shift``) and
        :func:`predict` moves its output's georeferencing by it, without resampling.
        BCNet models measure the shift (without applying it) even when False, to set it
        beside their filter-centroid shift.
    src_time : str, datetime or numpy.datetime64, optional
        The source's acquisition date, for a reference time series; by default the
        source's ``time`` coordinate or date attribute (``TIFFTAG_DATETIME``...).
    dates : {"auto", "nearest", "all"} or sequence of dates
        Which reference dates the fit learns from (see :mod:`xharmonise.dates`):
        ``"auto"``, the nearest date while it has enough clear pixels, the next ones only
        to fill what it lacks; ``"nearest"``; ``"all"`` within ``max_days``, each pixel
        from its nearest clear date; or the dates to use.
    max_days : float
        Reference dates further than this from the source date are not used.

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
    arguments.date_options(dates_policy=dates, max_days=max_days, src_time=src_time)
    mask = arguments.mask(mask)
    return stages.run(
        stages.reflectance_pair(
            src, ref, scale=scale, offset=offset, bands=bands, src_time=src_time
        ),
        method_spec(method),
        mask=mask,
        coregister=coregister,
        variance=variance,
        patch_size=patch_size,
        test_fraction=test_fraction,
        max_patches=max_patches,
        seed=seed,
        iterations=iterations,
        batch_size=batch_size,
        device=device,
        progress=progress,
        dates_policy=dates,
        max_days=max_days,
    )


def _calibrated(
    calibration: Calibration, out: np.ndarray | da.Array, src: np.ndarray | da.Array, n: int
) -> np.ndarray | da.Array:
    """The calibrated σ² planes of ``map_pixels``'s output (lazy for a lazy one): the
    head's σ² mapped, or the empirical σ² of the source's brightness."""

    def planes(block: np.ndarray, src_block: np.ndarray) -> np.ndarray:
        if calibration.kind == "head":
            return calibration.variance(block[n:])
        return calibration.variance(block[:n], source_brightness(src_block))

    if not isinstance(out, da.Array):
        return planes(np.asarray(out), np.asarray(src))
    if calibration.kind == "head":
        # The head's σ² alone: no source block held in memory for it.
        return out[n:].map_blocks(
            calibration.variance, dtype=np.float32, meta=np.empty((0, 0, 0), np.float32)
        )
    lazy_src = da.asarray(src).rechunk({0: -1, 1: out.chunks[1], 2: out.chunks[2]})
    return da.map_blocks(
        planes,
        out,
        lazy_src,
        chunks=((n,), *out.chunks[1:]),
        dtype=np.float32,
        meta=np.empty((0, 0, 0), np.float32),
    )


#: A lazy source's out-of-domain share is estimated at predict time on at most this many
#: of its chunks (spread over the image), and on no more than one chunk in eight.
SAMPLE_CHUNKS = 4
_SAMPLE_PIXELS = 1 << 16  # per sampled chunk, strided


def _applicability(domain: Domain, src: np.ndarray | da.Array) -> np.ndarray | da.Array:
    """The applicability (y, x) of (band, y, x) reflectance, lazy for a lazy one."""
    if not isinstance(src, da.Array):
        return domain.applicability(np.asarray(src))
    lazy = src.rechunk({0: -1})
    return da.map_blocks(
        domain.applicability,
        lazy,
        drop_axis=0,
        chunks=lazy.chunks[1:],
        dtype=np.float32,
        meta=np.empty((0, 0), np.float32),
    )


def _sampled_share(
    domain: Domain, src: np.ndarray | da.Array, applicability: np.ndarray | da.Array
) -> tuple[float, int, str]:
    """The out-of-domain share: of every pixel for a NumPy source; for a lazy one, of a
    strided sample of a few chunks spread over the image (read now, nothing else is)."""
    if not isinstance(applicability, da.Array):
        share, n = out_of_domain_share(applicability)
        return share, n, f"{n} valid pixels"
    lazy = src.rechunk({0: -1}) if isinstance(src, da.Array) else da.asarray(src)
    rows, cols = len(lazy.chunks[1]), len(lazy.chunks[2])
    total = rows * cols
    k = min(SAMPLE_CHUNKS, max(1, total // 8))
    picks = (
        np.linspace(0, total - 1, k + 2)[1:-1].round().astype(int) if k < total else range(total)
    )
    values = []
    for i in sorted(set(int(v) for v in picks)):
        block = lazy.blocks[0, i // cols, i % cols]
        step = max(1, int(np.sqrt(block.shape[1] * block.shape[2] / _SAMPLE_PIXELS)))
        values.append(domain.applicability(np.asarray(block[:, ::step, ::step].compute())))
    share, n = out_of_domain_share(np.concatenate([v.ravel() for v in values]))
    return share, n, f"a sample of {n} valid pixels from {len(values)} of {total} chunks"


def predict(
    src: xr.DataArray | xr.Dataset,
    model: Harmoniser,
    *,
    with_variance: bool | None = None,
    with_applicability: bool = False,
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
    with_variance : bool, optional
        Include the ``variance`` variable, σ² calibrated on the fit's validation patches
        (``model.calibration``; ``model.variance_kind`` says which kind): with a variance
        head (``fit(..., variance=True)``), the head's σ² mapped; without one, an
        empirical σ² from the validation residuals as a function of the source brightness.
        By default (None) only a model with a head gives it, as its output; True asks any
        model for it; False leaves it out. A model saved before calibration existed gives
        its head's σ² as it is, and has none without a head.
    with_applicability : bool
        Include the ``applicability`` variable (y, x): how typical each source pixel is of
        the pixels the model was trained on (:mod:`xharmonise.applicability`), the share
        of the training pixels lying at least as far from the training domain, in [0, 1];
        below ``xharmonise.applicability.OUT_OF_DOMAIN`` (0.001) a pixel is outside the
        domain, where the mapping is an extrapolation. When more than ``WARN_SHARE``
        (1 %) of the valid pixels are, an
        :class:`~xharmonise.errors.OutOfDomainWarning` names their share, at predict
        time: measured on every pixel of a NumPy-backed ``src``, and on a strided sample
        of at most ``SAMPLE_CHUNKS`` (4) of its chunks for a Dask-backed one (those chunks
        are read; the output stays lazy). Refused for a model saved before applicability
        existed.
    scale, offset : float, optional
        Reflectance = DN x scale + offset for an integer ``src`` without
        ``scale_factor``/``add_offset`` attributes; by default those the model was trained
        with, when it was trained on integer DN too.

    Returns
    -------
    xarray.Dataset
        ``prediction`` (and ``variance``, with attributes ``variance_kind``, ``"head"`` or
        ``"empirical"``, and ``calibration``, ``"validation patches"`` or ``"none"``; its
        calibration is measured at the reference resolution, the only one a pair can
        score), float32 (band, y, x) on ``src``'s grid and
        chunks, NaN at no-data, CRS and coordinates kept; band labels are the reference
        bands. ``applicability``, when asked for, is float32 (y, x) on the same grid and
        chunks, NaN where any source band is no-data. Dask-backed (lazy) when ``src`` is.
        When the model was fitted with
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
    arguments.predict_options(
        model,
        with_variance=with_variance,
        with_applicability=with_applicability,
        scale=scale,
        offset=offset,
    )
    src_da = as_band_array(src, "the source")
    names = band_names(src_da)
    trained = list(model.src_bands)
    if len(names) != model.n_bands:
        raise BandMismatchError(
            f"the model was trained on {model.n_bands} source bands {trained}, the image has "
            f"{len(names)} {names}: select them, e.g. src.sel(band={trained})"
        )
    named = [n for n in names if not n.isdigit()]
    if named and names != trained and all(not b.isdigit() for b in model.src_bands):
        raise BandMismatchError(
            f"the model was trained on source bands {trained}, the image has {names}: "
            f"select and order them, e.g. src.sel(band={trained})"
        )
    scale, offset = scaling_like_training(
        src_da, (model.src_dtype, model.src_scale, model.src_offset), scale=scale, offset=offset
    )
    src_r = to_reflectance(src_da, scale=scale, offset=offset, name="the source")
    warning = method_spec(model.method).inference_warning
    if warning:
        warnings.warn(warning, DetailLossWarning, stacklevel=2)
    out = map_pixels(src_r.data, model)
    n = model.n_bands
    coords = {k: v for k, v in src_r.coords.items() if "band" not in v.dims}
    coords["band"] = list(model.ref_bands)
    ds = xr.Dataset(
        {"prediction": (("band", "y", "x"), out[:n])},
        coords=coords,
    )
    calibration = model.calibration
    kind = model.variance_kind
    wanted = model.variance if with_variance is None else with_variance
    if wanted and kind is not None:
        variance = out[n:] if calibration is None else _calibrated(calibration, out, src_r.data, n)
        ds["variance"] = (("band", "y", "x"), variance)
    if with_applicability:
        domain = model.domain
        assert domain is not None, "predict_options refuses a model without one"
        applicability = _applicability(domain, src_r.data)
        ds["applicability"] = (("y", "x"), applicability)
        ds["applicability"].attrs.update(
            long_name="applicability: share of training pixels at least as far out",
            units="1",
            out_of_domain_below=OUT_OF_DOMAIN,
        )
        share, n, where = _sampled_share(domain, src_r.data, applicability)
        if share > WARN_SHARE:
            warnings.warn(
                OutOfDomainWarning(
                    f"{share:.1%} of the source pixels ({where}) lie outside the domain the "
                    f"model was trained on (applicability below {OUT_OF_DOMAIN:g}; more than "
                    f"{WARN_SHARE:.0%} warns): there its output extrapolates. Mask them with "
                    f"ds['applicability'] >= {OUT_OF_DOMAIN:g}, or fit on a pair that shows "
                    "these land covers"
                ),
                stacklevel=2,
            )
    ds["prediction"].attrs.update(long_name="harmonised reflectance", units="1")
    if "variance" in ds:
        applied = calibration is not None and calibration.applied
        ds["variance"].attrs.update(
            long_name="predictive variance",
            units="1",
            # Strings, not bools: netCDF attributes cannot hold booleans.
            variance_kind=str(kind),
            calibration="validation patches" if applied else "none",
        )
    ds.attrs.update(
        method=model.method,
        source_bands=list(model.src_bands),
        reference_bands=list(model.ref_bands),
        xharmonise_version=version("xharmonise"),
    )
    if model.applied_shift is not None:
        # The model learned on the corrected source: put the output where the reference
        # sees its content. A georeferencing change only; the values are not resampled.
        east, north = model.applied_shift
        ds = _grid.translate(ds, -east, -north, crs=model.grid.ref.crs)
        ds.attrs["coregistration_shift"] = [east, north]
    if "spatial_ref" in ds.coords:
        for name in ds.data_vars:
            ds[name].attrs["grid_mapping"] = "spatial_ref"
    return ds


def evaluate(
    src: xr.DataArray | xr.Dataset,
    ref: xr.DataArray | xr.Dataset,
    model: Harmoniser,
    *,
    mask: xr.DataArray | None = None,
    bands: Mapping[str, str] | Sequence[str] | None = None,
    scale: float | tuple[float | None, float | None] | None = None,
    offset: float | tuple[float | None, float | None] | None = None,
    split: evaluation.Split = "all",
    patch_size: int | None = None,
    test_fraction: float | None = None,
    max_patches: int | None = None,
    seed: int | None = None,
    coregister: bool | ShiftEstimate | None = None,
    src_time: Any = None,
    dates: str | Sequence[Any] = "auto",
    max_days: float = DEFAULT_MAX_DAYS,
) -> xr.Dataset:
    """Score a fitted model on a pair (another date, a neighbouring scene) as ``fit`` does.

    The pair is sampled as :func:`fit` samples it (the same grid, MTF reduction, patch
    validity, masks and reference-date choice), the model predicts the patches as ``fit``
    predicts its test patches, at the reference resolution, and the same metrics are
    computed: check a model here before applying it elsewhere. Nothing is refitted: the
    ``linear`` stage is the model's own linear baseline, applied as learned.

    Parameters
    ----------
    src, ref : xarray.DataArray or xarray.Dataset
        Source and reference, of the kinds :func:`fit` takes (a reference time series is
        reduced to the dates that serve the source, as ``fit`` does: ``src_time``,
        ``dates``, ``max_days``), with the bands the model was fitted on.
    model : Harmoniser
        From :func:`fit` or :func:`xharmonise.load`.
    mask : xarray.DataArray, optional
        Cloud mask on the reference grid, as for :func:`fit`: masked pixels are not
        scored.
    bands : mapping or sequence, optional
        Band pairing, as for :func:`fit`; by default the model's own pairing when both
        inputs carry its band names, else in order. The paired bands must be the model's.
    scale, offset : float or (float, float), optional
        As for :func:`fit`; an integer source without scaling attributes is by default
        scaled as the model's training source was (as :func:`predict` does).
    split : {"all", "test"}
        Which valid patches are scored: ``"all"`` (for a pair the model never saw), or
        ``"test"``, the test split :func:`fit` holds out with the same ``patch_size``,
        ``test_fraction``, ``max_patches`` and ``seed``: on the pair the model was fitted
        on, with the model's own options (the default), these are the patches
        ``model.metrics`` was computed on, and the table is ``model.metrics`` again (to
        float rounding). ``"all"`` on the training pair scores training patches too, which
        flatters the model.
    patch_size, test_fraction, max_patches, seed : int, float, int, int, optional
        As for :func:`fit` (``max_patches`` and ``seed`` pick and order the patches for
        ``"all"`` too; ``test_fraction`` is read by ``"test"`` only). Each one left None
        is the model's own, as :func:`fit` recorded it (``model.sampling``); for a model
        saved before fit recorded them (``model.sampling is None``), fit's defaults: 32,
        0.1, no cap, 0. A value given wins; as None means the model's own, a model fitted
        with a ``max_patches`` cap scores every patch only when given a cap at least the
        pair's count of valid patches.
    coregister : bool or ShiftEstimate, optional
        The source's correction before sampling. By default (None) the model's: a model
        fitted with ``coregister=True`` corrects the source by the shift it measured on
        its training pair (right for that pair, and for a source with the same
        mis-registration: it is what :func:`predict` assumes, moving its output by that
        shift), else none. True measures this pair's own shift (:func:`estimate_shift`)
        and corrects it: for another scene whose mis-registration differs. False: no
        correction. A ShiftEstimate is applied as given.
    src_time, dates, max_days
        As for :func:`fit`.

    Returns
    -------
    xarray.Dataset
        ``metrics``: (band, metric, stage), the layout of ``model.metrics`` (stages
        initial, linear and model; RMSE, R², explained variance, max error, reflectance
        units). ``calibration``, for a model that gives σ² (every model fitted since σ²
        was calibrated; a model with a variance head): (band, measure), the coverage of
        ±1σ, ±1.96σ and ±2.58σ and the mean Gaussian NLL of the σ² :func:`predict`
        returns (calibrated, ``model.calibration``), with the calibrated Gaussian's
        coverage as coordinate ``nominal``. ``date_metrics`` for a reference time series:
        (band, metric, stage, date). Attributes: ``method``, ``split``, ``patches``
        (scored), ``valid_patches``, ``pixels`` (clear reference pixels scored), the
        sampling options used (``patch_size``, ``test_fraction``, ``max_patches``, the
        string ``"none"`` for no cap, and ``seed``) and ``sampling_from``, where they come
        from (``"given"``, ``"model"``, ``"fit defaults"``, or ``"given, else model"`` /
        ``"given, else fit defaults"`` when only some were given), ``variance_kind``,
        ``calibration`` and, when the source was corrected, ``coregistration_shift``
        (east, north).

    Raises
    ------
    BandMismatchError
        The pair's bands are not the model's.
    GridError
        The source's resolution relative to the reference is not the model's, or the
        mask is off the reference grid.
    NoOverlapError, NoValidPatchesError
        The pair does not overlap, or holds no valid patch.
    HarmoniseError
        A subclass naming the problem for any other bad input.

    Examples
    --------
    On the pair a model was fitted on, its test split gives back its metric table (the
    model recorded fit's sampling options, so they need not be repeated):

    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((400, 400), seed=0)
    >>> model = fit(pair.src, pair.ref, method="linear", patch_size=16)
    >>> scores = evaluate(pair.src, pair.ref, model, split="test")
    >>> bool(abs(scores["metrics"] - model.metrics).max() < 1e-6)
    True
    >>> scores.attrs["patch_size"], scores.attrs["sampling_from"]
    (16, 'model')

    On a neighbouring scene, every valid patch, with the coverage of the calibrated σ²:

    >>> other = simulate_pair((400, 400), seed=0, origin=(510000.0, 4800000.0))
    >>> scores = evaluate(other.src, other.ref, model)
    >>> scores["metrics"].sel(metric="rmse", stage="model").dims
    ('band',)
    >>> scores["calibration"].sel(measure="coverage_1.96").sizes["band"]
    4
    """
    given = {
        "patch_size": patch_size,
        "test_fraction": test_fraction,
        "max_patches": max_patches,
        "seed": seed,
    }
    options = arguments.evaluate_options(model, split=split, coregister=coregister, **given)
    arguments.date_options(dates_policy=dates, max_days=max_days, src_time=src_time)
    mask = arguments.mask(mask)
    return evaluation.run(
        evaluation.model_reflectance(
            src, ref, model, scale=scale, offset=offset, bands=bands, src_time=src_time
        ),
        model,
        mask=mask,
        coregister=coregister,
        split=split,
        **options,
        dates_policy=dates,
        max_days=max_days,
        sampling_from=evaluation.sampling_source(model, given),
    )
