"""The stages of :func:`xharmonise.fit`, each a function with a typed result.

``prepare_pair`` (reflectance, paired bands, phase-aligned grid, optional co-registration)
-> ``build_training_data`` (reference-resolution reductions, patch index, split, the
patches gathered once) -> ``fit_baseline`` (the linear baseline every fit reports) ->
``train_network`` (neural methods) -> ``calibrate`` (σ²) -> ``training_domain`` (the
applicability's domain) -> ``evaluate`` (metrics and scatter samples on the
held-out patches) -> ``assemble`` (the :class:`~xharmonise.Harmoniser`).

``run`` chains them as :func:`xharmonise.fit` does. Before ``build_training_data``
nothing is read but the windows a shift measurement correlates (``coregister=True``, and
every fit of a method that measures its shift); ``build_training_data`` reads the
reductions and the patches (and nothing else) into memory. The benchmarks call these
stages rather than re-writing their lines; what a method needs at each stage is asked of
the registry (:mod:`xharmonise.models.registry`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import dask
import numpy as np
import xarray as xr

from xharmonise import checks, dates, psf, sampling
from xharmonise import grid as _grid
from xharmonise.applicability import Domain, fit_domain
from xharmonise.calibration import (
    Calibration,
    calibration_table,
    fit_calibration,
    source_brightness,
)
from xharmonise.coregister import estimate_on_grid
from xharmonise.errors import (
    BandMismatchError,
    CalibrationWarning,
    CoregistrationError,
    DateError,
    GridError,
    InputValueError,
    UnknownBandWarning,
)
from xharmonise.harmoniser import FitReport, Harmoniser, package_versions
from xharmonise.harmoniser import Mapping as ModelMapping
from xharmonise.metrics import metric_table
from xharmonise.models.budget import TrainingConfig
from xharmonise.models.linear import apply_linear, fit_linear
from xharmonise.models.registry import RING_EXTRA, Method
from xharmonise.records import PairGrid, ShiftEstimate
from xharmonise.scaling import as_band_array, band_names, to_reflectance

__all__ = [
    "Evaluation",
    "PairedReflectance",
    "PreparedPair",
    "Trained",
    "TrainingData",
    "assemble",
    "build_training_data",
    "calibrate",
    "calibrated_variance",
    "date_index",
    "date_record",
    "evaluate",
    "fit_baseline",
    "gather_patches",
    "index_patches",
    "leave_out_changes",
    "measure_shift",
    "network_prediction",
    "prepare_pair",
    "reflectance_pair",
    "run",
    "score",
    "single_reference",
    "train_network",
    "training_domain",
    "variance_before_after",
    "warn_unknown_bands",
]


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


def _crop_mask(mask: xr.DataArray, ref: xr.DataArray, g: PairGrid) -> xr.DataArray:
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


@dataclass(frozen=True)
class PairedReflectance:
    """Both inputs as reflectance (band, y, x), their bands paired in order.

    Attributes
    ----------
    src, ref : xarray.DataArray
        Source and reference reflectance, lazy when the inputs are.
    src_bands, ref_bands : tuple of str
        ``src_bands[i]`` pairs with ``ref_bands[i]``.
    src_scale, src_offset : float
        Source reflectance = DN x scale + offset, as applied.
    src_dtype : str
        The source's dtype before scaling (integer DN or float reflectance).
    src_time : numpy.datetime64 or None
        The source's acquisition date, when known.

    ``ref`` is (time, band, y, x) for a reference time series of several dates, which
    :func:`run` reduces to one image (:func:`xharmonise.dates.compose`).
    """

    src: xr.DataArray
    ref: xr.DataArray
    src_bands: tuple[str, ...]
    ref_bands: tuple[str, ...]
    src_scale: float
    src_offset: float
    src_dtype: str
    src_time: np.datetime64 | None = None


def reflectance_pair(
    src: xr.DataArray | xr.Dataset,
    ref: xr.DataArray | xr.Dataset,
    *,
    scale: float | tuple[float | None, float | None] | None = None,
    offset: float | tuple[float | None, float | None] | None = None,
    bands: Mapping[str, str] | Sequence[str] | None = None,
    src_time: Any = None,
) -> PairedReflectance:
    """Reflectance of both inputs with their bands paired (lazy).

    The reference may be a time series ((time, band, y, x), or an odc-stac Dataset with
    one variable per band and a ``time`` dimension); ``src_time`` (or the source's own
    ``time`` coordinate or date attribute) dates the source.

    Examples
    --------
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((200, 200), seed=0)
    >>> paired = reflectance_pair(pair.src, pair.ref, bands={"B2": "B4", "B3": "B8"})
    >>> paired.src_bands, paired.ref_bands, paired.src.sizes["band"]
    (('B2', 'B3'), ('B4', 'B8'), 2)
    """
    src_scale, ref_scale = checks.per_input(scale, "scale", positive=True, example="1e-4")
    src_offset, ref_offset = checks.per_input(offset, "offset", positive=False, example="-0.1")
    checked = checks.mapping_or_names(bands, "bands")
    variables = None
    if isinstance(ref, xr.Dataset) and checked is not None:
        variables = list(checked.values()) if isinstance(checked, Mapping) else list(checked)
    when = dates.source_date(src, src_time)
    src_da = as_band_array(src, "the source")
    ref_da = as_band_array(ref, "the reference", series=True, variables=variables)
    src_r = to_reflectance(src_da, scale=src_scale, offset=src_offset, name="the source")
    ref_r = to_reflectance(ref_da, scale=ref_scale, offset=ref_offset, name="the reference")
    src_r, ref_r, src_names, ref_names = _pair_bands(src_r, ref_r, bands)
    used_scale = src_scale if src_scale is not None else src_da.attrs.get("scale_factor")
    used_offset = src_offset if src_offset is not None else src_da.attrs.get("add_offset")
    # to_reflectance checked the attributes: numbers (or arrays of one) when present.
    used_scale = 1.0 if used_scale is None else float(np.asarray(used_scale).reshape(()))
    used_offset = 0.0 if used_offset is None else float(np.asarray(used_offset).reshape(()))
    return PairedReflectance(
        src=src_r,
        ref=ref_r,
        src_bands=tuple(src_names),
        ref_bands=tuple(ref_names),
        src_scale=used_scale,
        src_offset=used_offset,
        src_dtype=str(src_da.dtype),
        src_time=when,
    )


def single_reference(
    paired: PairedReflectance,
    mask: xr.DataArray | None,
    *,
    policy: str | Sequence[Any] = "auto",
    max_days: float = dates.DEFAULT_MAX_DAYS,
    patch_size: int = 32,
) -> tuple[PairedReflectance, xr.DataArray | None, dates.DatedReference | None]:
    """The pair with one reference image: a time series reduced to the dates that serve
    the source (:func:`xharmonise.dates.compose`), and the mask that goes with it."""
    if "time" not in paired.ref.dims:
        if mask is not None and "time" in mask.dims:
            raise DateError(
                f"the mask has {mask.sizes['time']} dates but the reference is one image: "
                "give the mask of the reference's date, e.g. mask.sel(time=ref.time)"
            )
        return paired, mask, None
    first = paired.ref.isel(time=0, drop=True)
    g = _grid.pair_grid(paired.src, first)
    dated = dates.compose(
        paired.ref,
        mask,
        paired.src_time,
        policy=policy,
        max_days=max_days,
        window=(g.ref_rows, g.ref_cols),
        patch_size=patch_size,
    )
    return replace(paired, ref=dated.ref), dated.mask, dated


def measure_shift(
    paired: PairedReflectance,
    grid: PairGrid,
    mask: xr.DataArray | None = None,
    **options: Any,
) -> ShiftEstimate:
    """Phase-correlation shift of the source relative to the reference on ``grid``
    (options as for :func:`xharmonise.estimate_shift`)."""
    return estimate_on_grid(
        _grid.align_source(paired.src, grid),
        paired.ref.isel(y=grid.ref_rows, x=grid.ref_cols),
        _crop_mask(mask, paired.ref, grid) if mask is not None else None,
        factor=grid.factor,
        sigmas=psf.reference_sigmas(paired.ref_bands, grid.factor),
        bands=list(paired.ref_bands),
        **options,
    )


def warn_unknown_bands(ref_bands: Sequence[str], *, stacklevel: int) -> None:
    """:class:`~xharmonise.errors.UnknownBandWarning` naming the reference bands that get
    the default MTF; called once the pair is known to be usable (a pair refused anyway
    gets its error, not a warning first)."""
    unknown = [b for b in ref_bands if psf.s2_band(b) is None]
    if unknown:
        warnings.warn(
            UnknownBandWarning(
                f"reference bands {unknown} are no Sentinel-2 band names (B2 or B02, blue, "
                f"nir, rededge1...): their MTF is taken as {psf.DEFAULT_MTF}, a 10 m "
                "average; name them to get their own, e.g. "
                "ref.assign_coords(band=['B2', 'B3', 'B4', 'B8'])"
            ),
            stacklevel=stacklevel + 1,
        )


@dataclass(frozen=True)
class PreparedPair:
    """The pair ready to sample: on one phase-aligned grid, co-registered if asked.

    Attributes
    ----------
    paired : PairedReflectance
        The reflectances (the source as corrected by ``applied_shift``, if any).
    grid : PairGrid
        The training grid (after the correction).
    aligned : xarray.DataArray
        The source resampled onto the reference's phase, cropped to the overlap (lazy
        when the inputs are).
    ref : xarray.DataArray
        The reference cropped to the overlap (lazy when the inputs are).
    mask : xarray.DataArray or None
        The cloud mask cropped like ``ref``.
    sigmas : tuple of float
        Reference MTF Gaussian sigma per band, in source pixels.
    shift_estimate : ShiftEstimate or None
        The phase-correlation shift measured, if any.
    applied_shift : (float, float) or None
        The (east, north) shift the source was corrected by before sampling.
    """

    paired: PairedReflectance
    grid: PairGrid
    aligned: xr.DataArray
    ref: xr.DataArray
    mask: xr.DataArray | None
    sigmas: tuple[float, ...]
    shift_estimate: ShiftEstimate | None
    applied_shift: tuple[float, float] | None


def prepare_pair(
    paired: PairedReflectance,
    *,
    mask: xr.DataArray | None,
    coregister: bool | ShiftEstimate,
    measure: bool,
    seed: int,
) -> PreparedPair:
    """Put the pair on one grid, measuring its shift when ``coregister`` or ``measure``
    asks and correcting the source by it when ``coregister`` does.

    A shift that ``measure`` alone asked for (BCNet sets it beside its filter's) is left
    out when the measurement fails; with ``coregister=True`` the failure is raised.
    """
    g = _grid.pair_grid(paired.src, paired.ref)
    # Called by run, called by xharmonise.fit: the warning points at fit's caller.
    warn_unknown_bands(paired.ref_bands, stacklevel=4)
    estimate = coregister if isinstance(coregister, ShiftEstimate) else None
    if estimate is None and (coregister or measure):
        try:
            estimate = measure_shift(paired, g, mask, seed=seed)
        except CoregistrationError:
            if coregister:
                raise
    applied = None
    resampling = "bilinear"
    if coregister and estimate is not None:
        moved = _grid.translate(paired.src, -estimate.east, -estimate.north, crs=g.ref.crs)
        paired = replace(paired, src=moved)
        g = _grid.pair_grid(paired.src, paired.ref)
        applied = (float(estimate.east), float(estimate.north))
        # Cubic keeps more of the source's detail than bilinear through a sub-pixel move.
        resampling = "cubic"
    return PreparedPair(
        paired=paired,
        grid=g,
        aligned=_grid.align_source(paired.src, g, resampling=resampling),
        ref=paired.ref.isel(y=g.ref_rows, x=g.ref_cols),
        mask=_crop_mask(mask, paired.ref, g) if mask is not None else None,
        sigmas=tuple(psf.reference_sigmas(paired.ref_bands, g.factor)),
        shift_estimate=estimate,
        applied_shift=applied,
    )


@dataclass(frozen=True)
class TrainingData:
    """The pair's training data, in memory: everything the later stages read.

    Attributes
    ----------
    coarse : sampling.Coarse
        Reference-resolution reductions of the whole overlap.
    index : sampling.PatchIndex
        Patch geometry and validity.
    train_cells, test_cells : numpy.ndarray
        (n, 2) patch (row, col) of the training and held-out patches.
    n_val : int
        The first ``n_val`` training patches are the validation patches of early stopping.
    margin : int
        Source pixels around full-resolution patches (methods that train on them).
    train, held_out : sampling.Patches
        The training patches and those the metrics are computed on (the test patches, or
        the training ones when no patch could be held out), each gathered once, with
        full-resolution source patches when the method trains on them.
    """

    coarse: sampling.Coarse
    index: sampling.PatchIndex
    train_cells: np.ndarray
    test_cells: np.ndarray
    n_val: int
    margin: int
    train: sampling.Patches
    held_out: sampling.Patches

    @property
    def counts(self) -> dict[str, int]:
        """Patch counts: total, valid, no-data, cloudy, train, test."""
        return dict(self.index.counts, train=len(self.train_cells), test=len(self.test_cells))


def build_training_data(
    pair: PreparedPair,
    spec: Method,
    *,
    patch_size: int,
    test_fraction: float,
    max_patches: int | None,
    seed: int,
) -> TrainingData:
    """Reduce the pair to the reference resolution, index and split its patches, and
    gather them: the stage that reads the pixels the fit learns from."""
    n_bands = len(pair.paired.ref_bands)
    coarse, index = index_patches(pair, patch_size=patch_size)
    train_cells, test_cells = sampling.split_patches(
        index, test_fraction=test_fraction, seed=seed, max_patches=max_patches
    )
    n_pixels = _clear_pixels(index, train_cells)
    if n_pixels < n_bands + 1:
        raise InputValueError(
            f"only {len(train_cells)} training patch(es) of {patch_size} x {patch_size} pixels "
            f"({n_pixels} clear pixels) for a linear fit of {n_bands + 1} terms per band: "
            "raise max_patches or patch_size, or give a larger clear overlap"
        )
    # Early stopping needs its own held-out patches: the test split only scores the result.
    n_val = max(1, round(0.1 * len(train_cells))) if len(train_cells) > 1 else 0
    # Metrics use the held-out patches; a single valid patch can only be scored on itself.
    eval_cells = test_cells if len(test_cells) else train_cells
    margin = spec.filter_margin(list(pair.sigmas), pair.grid.factor)
    return TrainingData(
        coarse=coarse,
        index=index,
        train_cells=train_cells,
        test_cells=test_cells,
        n_val=n_val,
        margin=margin,
        train=gather_patches(pair, spec, coarse, index, train_cells),
        held_out=gather_patches(pair, spec, coarse, index, eval_cells),
    )


def index_patches(
    pair: PreparedPair, *, patch_size: int
) -> tuple[sampling.Coarse, sampling.PatchIndex]:
    """The pair's reference-resolution reductions (in memory) and its patch index: which
    patches are valid, as every fit and evaluation of the pair sees them."""
    g, sigmas = pair.grid, list(pair.sigmas)
    # The validated ring is the widest any method needs, so every method trains and is
    # scored on the same patches of a pair.
    ring = math.ceil(psf.kernel_margin(max(sigmas), g.factor, extra=RING_EXTRA) / g.factor)
    coarse = sampling.reduce_to_reference(
        pair.aligned, pair.ref, pair.mask, factor=g.factor, sigmas=sigmas
    )
    _check_reflectance_range(coarse)
    # The reference's blur spreads a cloud's brightness about 3 sigma around it, beyond
    # what the mask flags.
    cloud_margin = math.ceil(3.0 * max(sigmas) / g.factor)
    index = sampling.patch_validity(
        coarse, patch_size=patch_size, ring=ring, cloud_margin=cloud_margin
    )
    return coarse, index


def gather_patches(
    pair: PreparedPair,
    spec: Method,
    coarse: sampling.Coarse,
    index: sampling.PatchIndex,
    cells: np.ndarray,
) -> sampling.Patches:
    """The patches ``cells``, with the full-resolution source patches (and the margin)
    the method's network takes when it trains on them."""
    g = pair.grid
    full = pair.aligned if spec.trains_on == "full_patches" else None
    margin = spec.filter_margin(list(pair.sigmas), g.factor)
    return sampling.gather(index, cells, coarse=coarse, src=full, factor=g.factor, margin=margin)


def _clear_pixels(index: sampling.PatchIndex, cells: np.ndarray) -> int:
    """Reference pixels clear of the mask in the patches ``cells``."""
    if index.clear is None:
        return len(cells) * index.patch_size**2
    return int(sampling.windows(index, cells, index.clear).sum())


def fit_baseline(data: TrainingData) -> np.ndarray:
    """The per-band linear baseline ``[A | b]`` (band, band + 1) on the training patches."""
    return fit_linear(data.train.src, data.train.ref, axis=1)


@dataclass(frozen=True)
class Trained:
    """A trained network and what it predicts on the held-out patches.

    Attributes
    ----------
    net : torch.nn.Module
        The network, on the CPU, in eval mode.
    history : dict
        Training curves and run facts (best iteration, steps run, seconds, device, the
        linear baseline's validation error).
    prediction : numpy.ndarray
        (patch, band, y, x) prediction on the held-out patches.
    variance : numpy.ndarray or None
        Its variance as the head gives it, for networks with a variance head.
    validation_prediction, validation_variance : numpy.ndarray or None
        The same on the validation patches, which :func:`calibrate` fits σ² on.
    """

    net: Any
    history: dict[str, Any]
    prediction: np.ndarray
    variance: np.ndarray | None
    validation_prediction: np.ndarray | None = None
    validation_variance: np.ndarray | None = None


def _model_input(patches: sampling.Patches, spec: Method) -> np.ndarray:
    if spec.trains_on == "full_patches":
        assert patches.src_full is not None, "build_training_data gathers them for this method"
        return patches.src_full
    return patches.src


# Output pixels per forward pass of network_prediction: bounds the memory of CalibNet's
# two 320-wide hidden activations (about 340 MB each) on a large evaluation.
_FORWARD_PIXELS = 2**18


def network_prediction(
    net: Any, patches: sampling.Patches, spec: Method
) -> tuple[np.ndarray, np.ndarray | None]:
    """A trained network's prediction (and its head's σ², if any) on gathered patches,
    in batches of patches, on the CPU in inference mode; the network is not changed."""
    import torch

    inputs = _model_input(patches, spec)
    step = max(1, _FORWARD_PIXELS // max(1, patches.ref[0, 0].size))
    preds: list[np.ndarray] = []
    variances: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, len(inputs), step):
            pred, var = net(torch.from_numpy(inputs[start : start + step]))
            preds.append(pred.numpy())
            if var is not None:
                variances.append(var.numpy())
    return np.concatenate(preds), np.concatenate(variances) if variances else None


def train_network(
    pair: PreparedPair,
    data: TrainingData,
    spec: Method,
    linear: np.ndarray,
    *,
    variance: bool,
    iterations: int | None,
    batch_size: int | None,
    seed: int,
    device: str,
    progress: bool,
    budget: TrainingConfig | None = None,
) -> Trained:
    """Train the method's network on the training patches, stopping early on the
    validation patches, and predict the held-out patches.

    ``budget`` replaces the method's default budget on the device (``iterations`` and
    ``batch_size`` still override its fields), for benchmarks that compare budgets.
    """
    # torch is imported here only: the linear path and predict's NumPy path never need it.
    import torch

    from xharmonise.losses import relative_error
    from xharmonise.models import build_model
    from xharmonise.training import PatchSet, train

    n_val = data.n_val
    n_fit = len(data.train_cells) - n_val
    pixels = _clear_pixels(data.index, data.train_cells[n_val:])
    if pixels < 2:
        raise InputValueError(
            f"only {pixels} clear pixel(s) to train on ({n_fit} patch of "
            f"{data.index.patch_size} x {data.index.patch_size} after holding out validation "
            "and test patches), which batch normalisation cannot use: raise max_patches or "
            "patch_size, or give a larger clear overlap"
        )
    src, ref = _model_input(data.train, spec), data.train.ref
    fit_set = PatchSet(src=src[n_val:], ref=ref[n_val:])
    # With one training patch, it is its own validation patch.
    val = slice(0, n_val) if n_val else slice(None)
    val_set = PatchSet(src=src[val], ref=ref[val])
    reference = float(
        relative_error(
            torch.from_numpy(apply_linear(linear, data.train.src[val], axis=1)),
            torch.from_numpy(ref[val]),
            masked=True,
        )
    )
    g = pair.grid
    net = build_model(
        spec.name,
        fit_set.n_bands,
        variance=variance,
        factor=g.factor,
        sigmas=list(pair.sigmas),
        margin=data.margin,
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
        budget=budget,
    )
    net = net.cpu().eval()
    pred, var = network_prediction(net, data.held_out, spec)
    # σ² is calibrated on the validation patches: the test patches only score it.
    with torch.inference_mode():
        val_pred, val_var = net(torch.from_numpy(val_set.src))
    history = dict(result.history)
    history.update(
        best_iteration=result.best_iteration,
        iterations_run=result.iterations_run,
        seconds=result.seconds,
        device=result.device,
        linear_val_relative_error=reference,
    )
    return Trained(
        net=net,
        history=history,
        prediction=pred,
        variance=var,
        validation_prediction=val_pred.numpy(),
        validation_variance=None if val_var is None else val_var.numpy(),
    )


def _validation(data: TrainingData) -> slice:
    """The validation patches among the training ones (with a single training patch, it
    is its own validation patch, as in :func:`train_network`)."""
    return slice(0, data.n_val) if data.n_val else slice(None)


def _validation_prediction(
    data: TrainingData, linear: np.ndarray, trained: Trained | None
) -> np.ndarray:
    """The model's prediction on the validation patches (the linear map's without a net)."""
    if trained is None:
        return apply_linear(linear, data.train.src[_validation(data)], axis=1)
    assert trained.validation_prediction is not None, "train_network predicts them"
    return trained.validation_prediction


def variance_before_after(
    data: TrainingData,
    linear: np.ndarray,
    trained: Trained | None,
    calibration: Calibration,
    prediction: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """σ² on the held-out patches before and after ``calibration``, for ``prediction``.

    Before: the head's own σ², or without a head one σ² per band, the mean square of the
    validation residuals. After: the calibrated σ², as ``predict`` gives it.
    """
    raw = None if trained is None else trained.variance
    after = calibrated_variance(calibration, data.held_out, prediction, raw)
    if calibration.kind == "head":
        assert raw is not None, "a head's calibration"
        return raw, after
    residual = data.train.ref[_validation(data)] - _validation_prediction(data, linear, trained)
    mean_square = np.nanmean(residual**2, axis=(0, 2, 3))
    before = np.broadcast_to(mean_square[None, :, None, None], prediction.shape)
    return before, after


def calibrated_variance(
    calibration: Calibration,
    patches: sampling.Patches,
    prediction: np.ndarray,
    raw: np.ndarray | None,
) -> np.ndarray:
    """The σ² ``predict`` gives on ``patches`` (patch, band, y, x): the head's σ²
    ``raw`` mapped, or the empirical σ² of the source brightness."""
    if calibration.kind == "head":
        assert raw is not None, "a head's calibration maps the head's σ²"
        return calibration.variance(raw, axis=1)
    return calibration.variance(prediction, source_brightness(patches.src, axis=1), axis=1)


def calibrate(data: TrainingData, linear: np.ndarray, trained: Trained | None) -> Calibration:
    """Fit the model's σ² map on the validation patches
    (:func:`xharmonise.calibration.fit_calibration`): the head's σ mapped, or an empirical
    σ from the residuals (the linear baseline's validation patches are among those it was
    fitted on: ``1 + band`` coefficients per band, a negligible optimism). A head left
    uncalibrated (too small a validation) warns with
    :class:`~xharmonise.errors.CalibrationWarning`."""
    val = _validation(data)
    target, src = data.train.ref[val], data.train.src[val]
    prediction = _validation_prediction(data, linear, trained)
    variance = None if trained is None else trained.validation_variance
    calibration = fit_calibration(target, prediction, variance=variance, src=src)
    if calibration.skipped:
        warnings.warn(
            CalibrationWarning(
                f"the variance head is left uncalibrated: {calibration.skipped}; its σ² is "
                "the head's own (model.calibration.skipped says so). Fit a larger pair or a "
                "smaller patch_size for more validation patches"
            ),
            # Called by run, called by xharmonise.fit: the warning points at fit's caller.
            stacklevel=4,
        )
    return calibration


#: Source pixels (at the source resolution) the training domain is measured on, about:
#: whole training patches are read until this many (all of them on a smaller pair).
DOMAIN_PIXELS = 1 << 19


def training_domain(pair: PreparedPair, data: TrainingData, *, seed: int) -> Domain:
    """The training domain of the applicability measure
    (:func:`xharmonise.applicability.fit_domain`), from the source pixels of training
    patches at the source resolution, the pixels ``predict`` sees, under clear reference
    pixels.

    Whole patches, about ``DOMAIN_PIXELS`` pixels of them chosen at random among the
    training ones (seeded), are read from the aligned source (already in memory for the
    methods that train on full-resolution patches): a scene's covers come in parcels,
    and many patches sample them better than many pixels of a few. A source out of phase
    with the training grid is read on its own grid (the resampling onto the grid would
    smooth its noise and texture, and narrow the domain below what ``predict`` sees).
    """
    f = pair.grid.factor
    p = data.index.patch_size
    per_patch = (p * f) ** 2
    n_cells = len(data.train_cells)
    take = min(n_cells, max(1, -(-DOMAIN_PIXELS // per_patch)))
    chosen = np.sort(np.random.default_rng(seed).permutation(n_cells)[:take])
    full: np.ndarray | None
    cells = data.train_cells[chosen]
    own = _own_pixels(pair, data.index, cells)
    if own is not None:
        full, chosen = own[0], chosen[own[1]]
    elif data.train.src_full is not None:
        m = data.margin
        full = data.train.src_full[chosen, :, m : m + p * f, m : m + p * f]
    else:
        full = sampling.gather(
            data.index,
            data.train_cells[chosen],
            coarse=data.coarse,
            src=pair.aligned,
            factor=f,
        ).src_full
    assert full is not None, "gather reads the source when given one"
    clear = ~np.isnan(data.train.ref[chosen]).any(axis=1)
    clear = np.repeat(np.repeat(clear, f, axis=1), f, axis=2)
    pixels = np.moveaxis(full, 1, -1)[clear]
    return fit_domain(pixels, seed=seed, patches=take)


def _own_pixels(
    pair: PreparedPair, index: sampling.PatchIndex, cells: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """The source's own pixels under the patches ``cells`` (the nearest window of its grid)
    and which cells they are (windows past its edge are left out), for a source of the
    training grid's CRS and pixel size but another phase; None for any other source (on
    the grid's phase, the aligned source is the source itself)."""
    src = pair.paired.src
    src_gb, target = _grid.geobox_of(src, "the source"), pair.grid.src
    a, b = src_gb.affine, target.affine
    if src_gb.crs != target.crs or not np.allclose(
        (a.a, a.b, a.d, a.e), (b.a, b.b, b.d, b.e), rtol=1e-9, atol=0
    ):
        return None
    col0, row0 = ~a @ (b.c, b.f)
    if abs(col0 - round(col0)) < 1e-6 and abs(row0 - round(row0)) < 1e-6:
        return None
    f = pair.grid.factor
    size = index.patch_size * f
    r0, c0 = index.origin(cells[:, 0], cells[:, 1])
    rows = np.rint(row0 + r0 * f).astype(int)
    cols = np.rint(col0 + c0 * f).astype(int)
    h, w = src.sizes["y"], src.sizes["x"]
    inside = np.flatnonzero((rows >= 0) & (cols >= 0) & (rows + size <= h) & (cols + size <= w))
    if inside.size == 0:
        return None
    reads = [src.data[:, rows[i] : rows[i] + size, cols[i] : cols[i] + size] for i in inside]
    windows = dask.compute(*reads)
    return np.stack([np.asarray(v, np.float32) for v in windows]), inside


@dataclass(frozen=True)
class Evaluation:
    """The fit's scores on the held-out patches.

    Attributes
    ----------
    metrics : xarray.DataArray
        (band, metric, stage) for the stages initial, linear and model.
    samples : dict of numpy.ndarray
        A seeded subset of the held-out pixels, (pixel, band) float32 per stage, plus
        ``target`` and, with a variance head, ``variance`` (calibrated, as predicted).
    date_metrics : xarray.DataArray or None
        For a reference time series, the same table per date the held-out pixels come
        from (band, metric, stage, date).
    calibration_scores : xarray.DataArray or None
        Coverage and NLL of σ² on the held-out patches before and after the calibration
        (:func:`xharmonise.calibration.calibration_table`), when one was given.
    """

    metrics: xr.DataArray
    samples: dict[str, np.ndarray]
    date_metrics: xr.DataArray | None = None
    calibration_scores: xr.DataArray | None = None


# Test-split pixels kept in the model for its report's scatter plots: enough for smooth
# density plots, small enough to keep model files around a megabyte.
_MAX_SAMPLES = 20_000


def evaluate(
    data: TrainingData,
    linear: np.ndarray,
    trained: Trained | None,
    ref_bands: Sequence[str],
    *,
    seed: int,
    which: np.ndarray | None = None,
    date_labels: Sequence[str] = (),
    calibration: Calibration | None = None,
) -> Evaluation:
    """Score the source as it is, the linear baseline and the model on the held-out
    patches (the model is the baseline when nothing was trained); with ``which`` (the
    held-out patches' date index per pixel, from :func:`date_record`), per date too; with
    ``calibration`` (from :func:`calibrate`), its σ² before and after."""
    held = data.held_out
    predictions: dict[str, np.ndarray] = {
        "initial": held.src,
        "linear": apply_linear(linear, held.src, axis=1),
    }
    predictions["model"] = predictions["linear"] if trained is None else trained.prediction
    table, by_date = score(held.ref, predictions, ref_bands, which=which, date_labels=date_labels)
    stages = dict(predictions, target=held.ref)
    scores = None
    if calibration is not None:
        model = predictions["model"]
        before, after = variance_before_after(data, linear, trained, calibration, model)
        if calibration.kind == "head":
            stages["variance"] = after
        scores = calibration_table(held.ref, model, before, after, list(ref_bands))
    elif trained is not None and trained.variance is not None:
        stages["variance"] = trained.variance
    return Evaluation(
        metrics=table,
        samples=_sample_pixels(stages, seed=seed),
        date_metrics=by_date,
        calibration_scores=scores,
    )


def score(
    target: np.ndarray,
    predictions: dict[str, np.ndarray],
    ref_bands: Sequence[str],
    *,
    which: np.ndarray | None = None,
    date_labels: Sequence[str] = (),
) -> tuple[xr.DataArray, xr.DataArray | None]:
    """The metric table (band, metric, stage) of ``predictions`` (patch, band, y, x, one
    per stage) against ``target``, and with ``which`` (each target pixel's date index)
    the same per date (band, metric, stage, date)."""
    moved = {k: np.moveaxis(v, 1, 0) for k, v in predictions.items()}
    table = metric_table(np.moveaxis(target, 1, 0), moved, list(ref_bands))
    if which is None:
        return table, None
    tables = []
    for k in range(len(date_labels)):
        on_date = np.where((which == k)[:, None], target, np.float32(np.nan))
        tables.append(metric_table(np.moveaxis(on_date, 1, 0), moved, list(ref_bands)))
    by_date = xr.concat(tables, dim="date").assign_coords(date=list(date_labels))
    return table, by_date.transpose("band", "metric", "stage", "date")


#: A training pixel from a date other than the nearest is left out when its residual to a
#: robust linear fit exceeds this many robust standard deviations (1.4826 MAD) in a band:
#: the ground changed between that date and the source's (a harvest, a flood), which no
#: mapping of the source can learn.
CHANGE_MADS = 4.0


def date_index(dated: dates.DatedReference, pair: PreparedPair) -> np.ndarray:
    """Which date (index into ``dated.dates``, -1 none) each reference pixel of the
    training grid comes from, in memory: computed once, it reads the reference dates."""
    return np.asarray(dated.which.isel(y=pair.grid.ref_rows, x=pair.grid.ref_cols).values)


def leave_out_changes(
    dated: dates.DatedReference, which: np.ndarray, data: TrainingData
) -> tuple[TrainingData, dict[str, int]]:
    """``data`` with the training pixels of the farther dates whose ground changed masked
    (NaN), and how many per date (``which`` from :func:`date_index`); the nearest date's
    pixels are kept as they are (its outliers, e.g. the source's unmasked clouds, are the
    variance head's business), and so are those of a single date given explicitly."""
    if dated.trusted >= len(dated.dates):
        return data, {}
    train_dates = sampling.windows(data.index, data.train_cells, which)
    from_far = train_dates >= dated.trusted
    src, ref = data.train.src, data.train.ref
    labelled = ~np.isnan(ref).any(axis=1)
    changed = np.zeros_like(labelled)
    # Twice: the second fit no longer sees what the first found changed.
    for _ in range(2):
        trusted = np.where(changed[:, None], np.float32(np.nan), ref)
        residual = ref - apply_linear(fit_linear(src, trusted, axis=1), src, axis=1)
        values = np.moveaxis(residual, 1, 0)[:, labelled & ~changed]
        centre = np.median(values, axis=1)
        spread = 1.4826 * np.median(np.abs(values - centre[:, None]), axis=1)
        spread = np.maximum(spread, np.finfo(np.float32).tiny)
        z = np.abs(residual - centre[None, :, None, None]) / spread[None, :, None, None]
        changed = labelled & from_far & (np.nan_to_num(z).max(axis=1) > CHANGE_MADS)
    masked = np.where(changed[:, None], np.float32(np.nan), ref)
    counts = {str(d): int((changed & (train_dates == k)).sum()) for k, d in enumerate(dated.dates)}
    return replace(data, train=replace(data.train, ref=masked)), counts


def date_record(
    dated: dates.DatedReference, which: np.ndarray, data: TrainingData
) -> tuple[dict[str, Any], np.ndarray]:
    """The model's record of the dates a fit used (with the training patches and clear
    pixels each gave), and the held-out patches' date index per pixel (``which`` from
    :func:`date_index`)."""
    train = sampling.windows(data.index, data.train_cells, which)
    labelled = ~np.isnan(data.train.ref).any(axis=1)
    eval_cells = data.test_cells if len(data.test_cells) else data.train_cells
    record = dict(dated.record)
    record["train_pixels"] = {
        str(d): int(((train == k) & labelled).sum()) for k, d in enumerate(dated.dates)
    }
    record["train_patches"] = {
        str(d): int(((train == k) & labelled).any(axis=(1, 2)).sum())
        for k, d in enumerate(dated.dates)
    }
    return record, sampling.windows(data.index, eval_cells, which)


def _sample_pixels(stages: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """A seeded random subset of (patch, band, y, x) arrays as (pixel, band) float32, of
    the pixels whose target is not masked."""
    flat = {k: np.moveaxis(v, 1, -1).reshape(-1, v.shape[1]) for k, v in stages.items()}
    labelled = np.flatnonzero(~np.isnan(flat["target"]).any(axis=1))
    n = len(labelled)
    keep = labelled[np.random.default_rng(seed).permutation(n)[: min(n, _MAX_SAMPLES)]]
    keep.sort()
    return {k: np.ascontiguousarray(v[keep], dtype=np.float32) for k, v in flat.items()}


def assemble(
    pair: PreparedPair,
    data: TrainingData,
    spec: Method,
    linear: np.ndarray,
    trained: Trained | None,
    evaluation: Evaluation,
    *,
    variance: bool,
    dates_record: dict[str, Any] | None = None,
    calibration: Calibration | None = None,
    domain: Domain | None = None,
    sampling: dict[str, Any] | None = None,
) -> Harmoniser:
    """The fitted model: the mapping ``predict`` applies (with ``calibration``, from
    :func:`calibrate`, and ``domain``, from :func:`training_domain`) and the report of the
    fit (with ``sampling``, the options :func:`build_training_data` was given, so that
    ``evaluate`` can find the test split again)."""
    p = pair.paired
    mapping = ModelMapping(
        method=spec.name,
        src_bands=p.src_bands,
        ref_bands=p.ref_bands,
        factor=pair.grid.factor,
        sigmas=pair.sigmas,
        src_scale=p.src_scale,
        src_offset=p.src_offset,
        src_dtype=p.src_dtype,
        linear=linear,
        net=None if trained is None else trained.net,
        variance=variance,
        grid=pair.grid,
        applied_shift=pair.applied_shift,
        calibration=calibration,
        domain=domain,
    )
    report = FitReport(
        metrics=evaluation.metrics,
        history={} if trained is None else trained.history,
        patches=data.counts,
        samples=evaluation.samples,
        shift_estimate=pair.shift_estimate,
        versions=package_versions(),
        dates=dates_record or {},
        date_metrics=evaluation.date_metrics,
        calibration_scores=evaluation.calibration_scores,
        sampling=sampling,
    )
    return Harmoniser(mapping=mapping, fit_report=report)


def run(
    paired: PairedReflectance,
    spec: Method,
    *,
    mask: xr.DataArray | None,
    coregister: bool | ShiftEstimate,
    variance: bool,
    patch_size: int,
    test_fraction: float,
    max_patches: int | None,
    seed: int,
    iterations: int | None,
    batch_size: int | None,
    device: str,
    progress: bool,
    budget: TrainingConfig | None = None,
    dates_policy: str | Sequence[Any] = "auto",
    max_days: float = dates.DEFAULT_MAX_DAYS,
) -> Harmoniser:
    """Every stage after :func:`reflectance_pair`, as :func:`xharmonise.fit` runs them
    (``budget`` as for :func:`train_network`); a reference time series is first reduced
    to one image by :func:`single_reference` (``dates_policy``, ``max_days``)."""
    paired, mask, dated = single_reference(
        paired, mask, policy=dates_policy, max_days=max_days, patch_size=patch_size
    )
    pair = prepare_pair(
        paired, mask=mask, coregister=coregister, measure=spec.measures_shift, seed=seed
    )
    data = build_training_data(
        pair,
        spec,
        patch_size=patch_size,
        test_fraction=test_fraction,
        max_patches=max_patches,
        seed=seed,
    )
    left_out: dict[str, int] = {}
    grid_dates = None
    if dated is not None:
        grid_dates = date_index(dated, pair)
        data, left_out = leave_out_changes(dated, grid_dates, data)
    linear = fit_baseline(data)
    trained = None
    if spec.neural:
        trained = train_network(
            pair,
            data,
            spec,
            linear,
            variance=variance,
            iterations=iterations,
            batch_size=batch_size,
            seed=seed,
            device=device,
            progress=progress,
            budget=budget,
        )
    calibration = calibrate(data, linear, trained)
    domain = training_domain(pair, data, seed=seed)
    record: dict[str, Any] = {}
    which: np.ndarray | None = None
    labels: tuple[str, ...] = ()
    if dated is not None and grid_dates is not None:
        record, which = date_record(dated, grid_dates, data)
        record["changed_pixels_left_out"] = left_out
        labels = tuple(str(d) for d in dated.dates)
    evaluation = evaluate(
        data,
        linear,
        trained,
        paired.ref_bands,
        seed=seed,
        which=which,
        date_labels=labels,
        calibration=calibration,
    )
    return assemble(
        pair,
        data,
        spec,
        linear,
        trained,
        evaluation,
        variance=variance,
        dates_record=record,
        calibration=calibration,
        domain=domain,
        sampling={
            "patch_size": patch_size,
            "test_fraction": test_fraction,
            "max_patches": max_patches,
            "seed": seed,
        },
    )
