"""The fitted model: what ``predict`` applies, what the fit measured, and its file.

A :class:`Harmoniser` holds a :class:`Mapping` (everything :func:`xharmonise.predict`
needs) and a :class:`FitReport` (what :func:`xharmonise.fit` measured). :func:`save`
writes both to one safetensors file, versioned by its ``format`` tag; :func:`load` reads
the current format and every earlier one, and refuses any other by name.

File formats
------------
``xharmonise-model/2`` (this release)
    JSON metadata ``{"format", "mapping", "fit_report", "saved_by"}``: the mapping's fields
    (the grid as :meth:`~xharmonise.records.PairGrid.to_json`, ``applied_shift`` as
    ``[east, north]`` or null, ``net_config`` the network's config or null), the report's
    fields (``metrics`` as :meth:`xarray.DataArray.to_dict`, ``shift_estimate`` as
    :meth:`~xharmonise.records.ShiftEstimate.to_dict` or null, ``versions``) and the
    package versions that saved it.
    Fields added since, optional on reading (a file written before them loads without
    them): the mapping's ``calibration`` (:meth:`~xharmonise.Calibration.to_dict`) and
    ``domain`` (:meth:`~xharmonise.applicability.Domain.to_dict`: no applicability when
    absent), the report's ``calibration_scores``, ``dates``, ``date_metrics`` and
    ``sampling`` (``{"patch_size", "test_fraction", "max_patches", "seed"}``: unknown, None,
    when absent).
``xharmonise-model/1`` (release 0.1.0)
    One flat JSON object: the mapping's and the report's fields side by side, the grid
    without its place in the reference array, and ``coregistration``: the shift estimate
    plus ``applied``.

Both keep the weights as tensors: ``linear``, ``samples.<stage>`` and ``net.<parameter>``.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from dataclasses import dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from xharmonise.applicability import Domain
from xharmonise.calibration import Calibration
from xharmonise.checks import SAMPLING_OPTIONS, type_name
from xharmonise.checks import sampling as checked_sampling
from xharmonise.errors import HarmoniseError, InputTypeError, InputValueError, ModelFileError
from xharmonise.models.registry import METHODS, method
from xharmonise.records import PairGrid, ShiftEstimate

if TYPE_CHECKING:
    import fsspec

__all__ = [
    "FORMAT",
    "FORMATS_READ",
    "FitReport",
    "Harmoniser",
    "Mapping",
    "check_destination",
    "load",
    "save",
]

#: The format :func:`save` writes.
FORMAT = "xharmonise-model/2"
_FORMAT_1 = "xharmonise-model/1"
#: The formats :func:`load` reads, newest first.
FORMATS_READ: tuple[str, ...] = (FORMAT, _FORMAT_1)


def _invalid(what: str, fix: str) -> InputValueError:
    return InputValueError(f"{what}: {fix}")


@dataclass(frozen=True, kw_only=True, eq=False)
class Mapping:
    """What :func:`xharmonise.predict` applies: the bands, scaling, grid and learned weights.

    Attributes
    ----------
    method : str
        A method of :data:`xharmonise.models.METHODS` (``"linear"``, ``"calibnet"``,
        ``"convcalibnet"``, ``"bcnet"``).
    src_bands, ref_bands : tuple of str
        Paired band names: source band ``src_bands[i]`` maps to ``ref_bands[i]``.
    factor : int
        Source pixels per reference pixel along each axis, on the training grid.
    sigmas : tuple of float
        Reference MTF Gaussian sigma per band, in source-grid pixels.
    src_scale, src_offset : float
        Source reflectance = DN * scale + offset as used in training.
    src_dtype : str
        The training source's dtype (integer DN or float reflectance).
    linear : numpy.ndarray
        (band, band + 1) linear baseline ``[A | b]``, always fitted as the reference.
    net : torch.nn.Module or None
        The trained network; None exactly for methods without one (``linear``).
    variance : bool
        Whether the network predicts a per-pixel variance.
    grid : PairGrid
        The training grid.
    applied_shift : (float, float) or None
        East and north shift (CRS units) the source was corrected by before training
        (``fit(..., coregister=True)``); ``predict`` moves its output by minus it. None
        when the source was not moved.
    calibration : Calibration or None
        The σ map ``predict`` applies, fitted after training on the validation patches
        (:mod:`xharmonise.calibration`): the head's σ² mapped (``kind="head"``), or an
        empirical σ² for a model without a head (``kind="empirical"``). None for a model
        saved before calibration existed: a head's σ² is then returned as the head gives
        it, and a model without a head returns none.
    domain : Domain or None
        The training domain ``predict(..., with_applicability=True)`` measures source
        pixels against (:mod:`xharmonise.applicability`). None for a model saved before
        applicability existed: it has no applicability.

    Raises
    ------
    InputValueError
        Fields that do not fit together (band lists, sigmas, the linear matrix's shape,
        a network of another method or band count...).
    UnknownMethodError
        ``method`` is no known method.

    Examples
    --------
    >>> import dataclasses, xharmonise
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((200, 200), seed=0)
    >>> mapping = xharmonise.fit(pair.src, pair.ref, method="linear", patch_size=8).mapping
    >>> mapping.method, mapping.ref_bands, mapping.linear.shape
    ('linear', ('B2', 'B3', 'B4', 'B8'), (4, 5))
    >>> dataclasses.replace(mapping, sigmas=(2.5,))
    Traceback (most recent call last):
        ...
    xharmonise.errors.InputValueError: ...
    """

    method: str
    src_bands: tuple[str, ...]
    ref_bands: tuple[str, ...]
    factor: int
    sigmas: tuple[float, ...]
    src_scale: float
    src_offset: float
    src_dtype: str
    linear: np.ndarray
    net: Any
    variance: bool
    grid: PairGrid
    applied_shift: tuple[float, float] | None
    calibration: Calibration | None = None
    domain: Domain | None = None

    def __post_init__(self) -> None:
        spec = method(self.method)
        src, ref = self.src_bands, self.ref_bands
        if isinstance(src, str) or isinstance(ref, str):
            raise _invalid(f"band lists {src!r}, {ref!r}", "give sequences of band names")
        src, ref = tuple(src), tuple(ref)
        if not ref or len(src) != len(ref) or not all(isinstance(b, str) for b in src + ref):
            raise _invalid(
                f"band lists {src!r} and {ref!r} do not pair up",
                "give as many source as reference band names (strings), at least one",
            )
        n = len(ref)
        if not isinstance(self.grid, PairGrid):
            raise _invalid(f"grid is a {type_name(self.grid)}", "give a PairGrid")
        factor = self.factor
        if not isinstance(factor, int) or isinstance(factor, bool) or factor != self.grid.factor:
            raise _invalid(
                f"factor {factor!r} is not the grid's ({self.grid.factor})",
                "give the PairGrid's integer factor",
            )
        sigmas = tuple(self.sigmas)
        if len(sigmas) != n or not all(_is_number(s) and s > 0 for s in sigmas):
            raise _invalid(
                f"sigmas {sigmas!r} are not {n} positive numbers", "give one sigma per band"
            )
        if not (_is_number(self.src_scale) and _is_number(self.src_offset)):
            raise _invalid(
                f"src_scale {self.src_scale!r} or src_offset {self.src_offset!r} is not a "
                "finite number",
                "give the scaling the source was read with",
            )
        try:
            np.dtype(self.src_dtype)
        except TypeError:
            raise _invalid(f"src_dtype {self.src_dtype!r} is no dtype", "give its name") from None
        if not isinstance(self.linear, np.ndarray) or self.linear.shape != (n, n + 1):
            shape = getattr(self.linear, "shape", type_name(self.linear))
            raise _invalid(
                f"the linear matrix is {shape}, not {(n, n + 1)}", "give [A | b] of the bands"
            )
        if not isinstance(self.variance, bool):
            raise _invalid(f"variance {self.variance!r} is not a bool", "give True or False")
        if (self.net is None) == spec.neural:
            raise _invalid(
                f"a {spec.name} mapping {'without' if spec.neural else 'with'} a network",
                "give the trained network for neural methods and None for the others",
            )
        if self.net is not None:
            found = (
                getattr(self.net, "method", None),
                getattr(self.net, "n_bands", None),
                getattr(self.net, "variance", None),
            )
            if found != (spec.name, n, self.variance):
                raise _invalid(
                    f"the network (method, bands, variance) is {found}, not "
                    f"{(spec.name, n, self.variance)}",
                    "give the network trained for this mapping",
                )
        elif self.variance:
            raise _invalid(f"a {spec.name} mapping with variance", "variance needs a network")
        shift = None
        if self.applied_shift is not None:
            given = tuple(self.applied_shift)
            if len(given) != 2 or not all(_is_number(v) for v in given):
                raise _invalid(
                    f"applied_shift {self.applied_shift!r} is not (east, north)",
                    "give two finite numbers or None",
                )
            shift = (float(given[0]), float(given[1]))
        cal = self.calibration
        if cal is not None:
            if not isinstance(cal, Calibration):
                raise _invalid(f"calibration is a {type_name(cal)}", "give a Calibration or None")
            if cal.n_bands != n or (cal.kind == "head") != bool(self.variance):
                raise _invalid(
                    f"a {cal.kind} calibration of {cal.n_bands} bands for a mapping of {n} "
                    f"bands {'with' if self.variance else 'without'} a variance head",
                    "give one fitted for this mapping: kind 'head' with a variance head, "
                    "'empirical' without (or None)",
                )
        dom = self.domain
        if dom is not None:
            if not isinstance(dom, Domain):
                raise _invalid(f"domain is a {type_name(dom)}", "give a Domain or None")
            if dom.n_bands != n:
                raise _invalid(
                    f"a domain of {dom.n_bands} bands for a mapping of {n} bands",
                    "give the domain measured on this mapping's source bands (or None)",
                )
        # Frozen: normalise the sequences through object.__setattr__, once, here.
        object.__setattr__(self, "src_bands", src)
        object.__setattr__(self, "ref_bands", ref)
        object.__setattr__(self, "sigmas", tuple(float(s) for s in sigmas))
        object.__setattr__(self, "src_scale", float(self.src_scale))
        object.__setattr__(self, "src_offset", float(self.src_offset))
        object.__setattr__(self, "src_dtype", str(self.src_dtype))
        object.__setattr__(self, "applied_shift", shift)


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, int | float | np.integer | np.floating)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


@dataclass(frozen=True, kw_only=True, eq=False)
class FitReport:
    """What :func:`xharmonise.fit` measured: scores, curves, samples and provenance.

    Attributes
    ----------
    metrics : xarray.DataArray
        Test-split metrics (band, metric, stage) for stages initial, linear and model.
    history : dict
        Training curves (empty for methods without a network).
    patches : dict
        Patch counts: total, valid, nodata, cloudy (less than
        :data:`~xharmonise.sampling.MIN_CLEAR` clear), partial (valid but partly masked),
        train, test.
    samples : dict of numpy.ndarray
        A random subset of the test-split pixels at the reference resolution, (pixel,
        band) float32 per stage: ``target`` (the reference), ``initial``, ``linear``,
        ``model`` and, with a variance head, ``variance``: the report's scatter plots
        without the images.
    shift_estimate : ShiftEstimate or None
        The phase-correlation shift measured (or given) at fit time; None when none was.
    versions : dict
        Package versions at fit time (``xharmonise``, ``torch``, ``numpy``...).
    dates : dict
        For a reference time series: the source date, the policy and window, the
        candidate dates with their clear pixels, the dates used, and the training pixels
        and patches each gave (empty for a single reference image).
    date_metrics : xarray.DataArray or None
        For a reference time series, ``metrics`` per date the held-out pixels come from
        (band, metric, stage, date).
    calibration_scores : xarray.DataArray or None
        (band, measure, stage) coverage of ±1σ, ±1.96σ, ±2.58σ and mean NLL of σ² on the
        test patches, ``before`` and ``after`` the calibration
        (:func:`xharmonise.calibration.calibration_table`; before is the head's σ², or
        for an empirical σ² one value per band, the validation residuals' mean square).
        None for models saved before calibration existed.
    sampling : dict or None
        The options ``fit`` chose its patches and split with: ``patch_size``,
        ``test_fraction``, ``max_patches`` and ``seed``, so that
        :func:`xharmonise.evaluate` finds the same test patches again without being told
        them. None when unknown: a model saved before fit recorded them.

    Raises
    ------
    InputValueError
        A field of the wrong kind, or a sampling option :func:`xharmonise.fit` would
        refuse.

    Examples
    --------
    >>> import xharmonise
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((200, 200), seed=0)
    >>> report = xharmonise.fit(pair.src, pair.ref, method="linear", patch_size=8).fit_report
    >>> report.metrics.dims, sorted(report.samples)
    (('band', 'metric', 'stage'), ['initial', 'linear', 'model', 'target'])
    >>> report.sampling
    {'patch_size': 8, 'test_fraction': 0.1, 'max_patches': None, 'seed': 0}
    """

    metrics: xr.DataArray
    history: dict[str, Any]
    patches: dict[str, int]
    samples: dict[str, np.ndarray]
    shift_estimate: ShiftEstimate | None
    versions: dict[str, str]
    dates: dict[str, Any] = field(default_factory=dict)
    date_metrics: xr.DataArray | None = None
    calibration_scores: xr.DataArray | None = None
    sampling: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.metrics, xr.DataArray):
            raise _invalid(f"metrics is a {type_name(self.metrics)}", "give an xarray.DataArray")
        if self.date_metrics is not None and not isinstance(self.date_metrics, xr.DataArray):
            raise _invalid(
                f"date_metrics is a {type_name(self.date_metrics)}",
                "give an xarray.DataArray or None",
            )
        for name in ("history", "patches", "samples", "versions", "dates"):
            if not isinstance(getattr(self, name), dict):
                raise _invalid(f"{name} is a {type_name(getattr(self, name))}", "give a dict")
        if not all(isinstance(v, np.ndarray) for v in self.samples.values()):
            raise _invalid("samples holds values that are not arrays", "give NumPy arrays")
        if self.shift_estimate is not None and not isinstance(self.shift_estimate, ShiftEstimate):
            raise _invalid(
                f"shift_estimate is a {type_name(self.shift_estimate)}",
                "give a ShiftEstimate or None",
            )
        scores = self.calibration_scores
        if scores is not None and not isinstance(scores, xr.DataArray):
            raise _invalid(
                f"calibration_scores is a {type_name(scores)}",
                "give an xarray.DataArray or None",
            )
        given = self.sampling
        if given is not None:
            if not isinstance(given, dict) or set(given) != set(SAMPLING_OPTIONS):
                raise _invalid(
                    f"sampling is {given!r}",
                    f"give a dict of exactly {', '.join(SAMPLING_OPTIONS)} (or None)",
                )
            # Checked as fit checks them, and copied: the report never shares a caller's dict.
            object.__setattr__(self, "sampling", checked_sampling(**given))


def _filter_methods() -> str:
    return ", ".join(m.name for m in METHODS.values() if m.has_filters)


@dataclass(frozen=True, kw_only=True, eq=False)
class Harmoniser:
    """A fitted mapping from source reflectance to reference-consistent reflectance.

    Built by :func:`xharmonise.fit`, read by :func:`xharmonise.load`; apply it with
    :func:`xharmonise.predict`. Read-only properties forward to the mapping's and the
    report's fields (``model.method`` is ``model.mapping.method``, ``model.metrics`` is
    ``model.fit_report.metrics``...).

    Attributes
    ----------
    mapping : Mapping
        What ``predict`` applies.
    fit_report : FitReport
        What the fit measured.

    Examples
    --------
    >>> import xharmonise
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((200, 200), seed=0)
    >>> model = xharmonise.fit(pair.src, pair.ref, method="linear", patch_size=8)
    >>> model.metrics.dims, model.n_bands
    (('band', 'metric', 'stage'), 4)
    >>> model.baseline().method, model.grid.factor
    ('linear', 5)
    """

    mapping: Mapping
    fit_report: FitReport

    def __post_init__(self) -> None:
        if not isinstance(self.mapping, Mapping):
            raise InputTypeError(f"mapping is a {type_name(self.mapping)}: give a Mapping")
        if not isinstance(self.fit_report, FitReport):
            raise InputTypeError(f"fit_report is a {type_name(self.fit_report)}: give a FitReport")

    # The mapping's fields.
    @property
    def method(self) -> str:
        """The method's name (see :data:`xharmonise.models.METHODS`)."""
        return self.mapping.method

    @property
    def src_bands(self) -> tuple[str, ...]:
        """Source band names, paired one to one with :attr:`ref_bands`."""
        return self.mapping.src_bands

    @property
    def ref_bands(self) -> tuple[str, ...]:
        """Reference band names."""
        return self.mapping.ref_bands

    @property
    def n_bands(self) -> int:
        """Number of paired bands."""
        return len(self.mapping.ref_bands)

    @property
    def factor(self) -> int:
        """Source pixels per reference pixel along each axis, on the training grid."""
        return self.mapping.factor

    @property
    def sigmas(self) -> tuple[float, ...]:
        """Reference MTF Gaussian sigma per band, source-grid pixels."""
        return self.mapping.sigmas

    @property
    def src_scale(self) -> float:
        """Source reflectance = DN * src_scale + src_offset, as in training."""
        return self.mapping.src_scale

    @property
    def src_offset(self) -> float:
        """See :attr:`src_scale`."""
        return self.mapping.src_offset

    @property
    def src_dtype(self) -> str:
        """The training source's dtype."""
        return self.mapping.src_dtype

    @property
    def linear(self) -> np.ndarray:
        """(band, band + 1) linear baseline ``[A | b]``."""
        return self.mapping.linear

    @property
    def net(self) -> Any:
        """The trained network (a torch module), or None."""
        return self.mapping.net

    @property
    def variance(self) -> bool:
        """Whether the model predicts a per-pixel variance."""
        return self.mapping.variance

    @property
    def calibration(self) -> Calibration | None:
        """The σ map ``predict`` applies; None for a model saved before calibration."""
        return self.mapping.calibration

    @property
    def domain(self) -> Domain | None:
        """The training domain of the applicability measure; None for a model saved
        before applicability existed (it has none)."""
        return self.mapping.domain

    @property
    def calibration_scores(self) -> xr.DataArray | None:
        """Test-split coverage and NLL of σ² before and after calibration, or None."""
        return self.fit_report.calibration_scores

    @property
    def variance_kind(self) -> str | None:
        """What σ² ``predict`` returns: ``"head"`` (the variance head's, calibrated unless
        :attr:`Calibration.skipped`; uncalibrated in a model saved before calibration),
        ``"empirical"`` (from the validation residuals, for a model without a head), or
        None (no σ²: a model without a head saved before calibration)."""
        if self.variance:
            return "head"
        return None if self.calibration is None else self.calibration.kind

    @property
    def grid(self) -> PairGrid:
        """The training grid."""
        return self.mapping.grid

    @property
    def applied_shift(self) -> tuple[float, float] | None:
        """East, north shift the source was corrected by before training, or None."""
        return self.mapping.applied_shift

    @property
    def src_pixel_size(self) -> float:
        """Pixel size of the training grid (reference pixel / factor), CRS units."""
        return abs(float(self.grid.ref.affine.a)) / self.factor

    # The report's fields.
    @property
    def metrics(self) -> xr.DataArray:
        """Test-split metrics (band, metric, stage)."""
        return self.fit_report.metrics

    @property
    def history(self) -> dict[str, Any]:
        """Training curves (empty without a network)."""
        return self.fit_report.history

    @property
    def patches(self) -> dict[str, int]:
        """Patch counts: total, valid, nodata, cloudy, partial, train, test."""
        return self.fit_report.patches

    @property
    def samples(self) -> dict[str, np.ndarray]:
        """Test-split pixel samples per stage, (pixel, band) float32."""
        return self.fit_report.samples

    @property
    def shift_estimate(self) -> ShiftEstimate | None:
        """The phase-correlation :class:`~xharmonise.records.ShiftEstimate` of the fit,
        or None when none was made."""
        return self.fit_report.shift_estimate

    @property
    def versions(self) -> dict[str, str]:
        """Package versions at fit time."""
        return self.fit_report.versions

    @property
    def dates(self) -> dict[str, Any]:
        """The reference dates a fit on a time series used (empty for one image)."""
        return self.fit_report.dates

    @property
    def date_metrics(self) -> xr.DataArray | None:
        """Held-out metrics per reference date (band, metric, stage, date), or None."""
        return self.fit_report.date_metrics

    @property
    def sampling(self) -> dict[str, Any] | None:
        """The options the fit chose its patches and test split with (``patch_size``,
        ``test_fraction``, ``max_patches``, ``seed``), or None for a model saved before
        fit recorded them. :func:`xharmonise.evaluate` uses them unless told otherwise.

        Examples
        --------
        >>> import xharmonise
        >>> from xharmonise.simulate import simulate_pair
        >>> pair = simulate_pair((200, 200), seed=0)
        >>> model = xharmonise.fit(pair.src, pair.ref, method="linear", patch_size=8, seed=3)
        >>> model.sampling
        {'patch_size': 8, 'test_fraction': 0.1, 'max_patches': None, 'seed': 3}
        """
        return self.fit_report.sampling

    def baseline(self) -> Harmoniser:
        """The linear baseline of this fit as a model of its own.

        Same bands, grid, scaling and applied shift; the mapping is the linear coefficients
        alone (no network, no variance), and its report scores the baseline as the model
        (its ``model`` stage is the ``linear`` one; no training history, no variance).

        Examples
        --------
        >>> import xharmonise
        >>> from xharmonise.simulate import simulate_pair
        >>> pair = simulate_pair((200, 200), seed=0)
        >>> model = xharmonise.fit(pair.src, pair.ref, method="calibnet", patch_size=8,
        ...                        iterations=5, batch_size=2, progress=False)
        >>> linear = model.baseline()
        >>> linear.method, linear.net is None, bool((linear.linear == model.linear).all())
        ('linear', True, True)
        >>> rmse = linear.metrics.sel(metric="rmse")
        >>> bool((rmse.sel(stage="model") == rmse.sel(stage="linear")).all()), linear.history
        (True, {})
        """
        r = self.fit_report
        metrics = r.metrics.copy()
        if "model" in metrics["stage"].values and "linear" in metrics["stage"].values:
            metrics.loc[{"stage": "model"}] = metrics.sel(stage="linear")
        samples = {k: v for k, v in r.samples.items() if k != "variance"}
        if "linear" in samples:
            samples["model"] = samples["linear"]
        return Harmoniser(
            mapping=replace(
                self.mapping, method="linear", net=None, variance=False, calibration=None
            ),
            fit_report=replace(
                r, metrics=metrics, history={}, samples=samples, calibration_scores=None
            ),
        )

    @property
    def filters(self) -> xr.DataArray:
        """The learned input filters (band, ky, kx) at source-grid resolution.

        Raises
        ------
        AttributeError
            For methods without learned filters.
        """
        if not method(self.method).has_filters:
            raise AttributeError(
                f"{self.method} models have no learned filters ({_filter_methods()} only)"
            )
        k = np.asarray(self.net.filters())
        half = (k.shape[-1] - 1) / 2
        offsets = (np.arange(k.shape[-1]) - half) * self.src_pixel_size
        return xr.DataArray(
            k,
            dims=("band", "ky", "kx"),
            coords={"band": list(self.ref_bands), "ky": -offsets, "kx": offsets},
            name="filters",
            attrs={"long_name": "learned input filters", "units": "1"},
        )

    @property
    def shift(self) -> xr.DataArray:
        """Shift of the source relative to the reference: (band, axis, estimate).

        ``axis`` is east/north; ``estimate`` holds ``"filter"`` (methods with learned
        filters: their centroids) and ``"phase_correlation"`` (when the fit measured one:
        any method with ``coregister=True``, and every fit of a method that measures it,
        see :attr:`xharmonise.models.Method.measures_shift`), side by side as a
        cross-check. Both are the displacement of the source content relative to the
        reference, as given to :func:`xharmonise.fit`, in CRS units (metres), east and north
        positive. The filter learns to fetch the source where the reference sees the
        content, so its centroid points along that shift; when the source was corrected
        before training, the filter only sees what remains, and the applied shift is added
        back so that both rows measure the same thing.

        Raises
        ------
        AttributeError
            When there is neither a filter nor a phase-correlation estimate.
        """
        estimates, names = [], []
        applied = self.applied_shift
        est = self.shift_estimate
        if method(self.method).has_filters:
            from xharmonise.models import filter_shift

            dy_dx = np.asarray(filter_shift(self.net.filters()))
            east = dy_dx[:, 1] * self.src_pixel_size
            north = -dy_dx[:, 0] * self.src_pixel_size  # rows grow southwards
            if applied is not None:
                east, north = east + applied[0], north + applied[1]
            estimates.append(np.stack([east, north], axis=1))
            names.append("filter")
        if est is not None:
            # An estimate given to fit may cover other bands: those fall back to the mean.
            estimates.append(
                np.array(
                    [est.bands.get(b, (est.east, est.north)) for b in self.ref_bands],
                    dtype=np.float64,
                )
            )
            names.append("phase_correlation")
        if not estimates:
            raise AttributeError(
                f"{self.method} models have no shift estimate: the filter shift is "
                f"{_filter_methods()} only; fit with coregister=True to measure one by phase "
                "correlation"
            )
        return xr.DataArray(
            np.stack(estimates, axis=-1),
            dims=("band", "axis", "estimate"),
            coords={"band": list(self.ref_bands), "axis": ["east", "north"], "estimate": names},
            name="shift",
            attrs={
                "units": "m",
                "long_name": "displacement of the source content relative to the reference",
                "applied": applied is not None,
            },
        )

    def save(
        self, path: str | os.PathLike, *, storage_options: dict[str, Any] | None = None
    ) -> Path | str:
        """Write the model to one safetensors file: forwards to :func:`save`.

        Examples
        --------
        >>> import tempfile, pathlib, xharmonise
        >>> from xharmonise.simulate import simulate_pair
        >>> pair = simulate_pair((200, 200), seed=0)
        >>> model = xharmonise.fit(pair.src, pair.ref, method="linear", patch_size=8)
        >>> model.save(pathlib.Path(tempfile.mkdtemp()) / "model.safetensors").suffix
        '.safetensors'
        """
        return save(self, path, storage_options=storage_options)

    def __repr__(self) -> str:
        m, scores = self.metrics, ""
        # A FitReport built by hand may hold metrics without the fit's labels: a repr
        # must never fail, so the scores are shown only where they can be read.
        labelled = "metric" in m.coords and "stage" in m.coords
        if labelled and "rmse" in m["metric"].values:
            rmse = m.sel(metric="rmse").mean("band")
            stages = ", ".join(f"{s}={float(rmse.sel(stage=s)):.4f}" for s in rmse["stage"].values)
            scores = f", mean test RMSE {stages}"
        return (
            f"<Harmoniser {self.method}{' +variance' if self.variance else ''}: "
            f"{list(self.src_bands)} -> {list(self.ref_bands)}, x{self.factor}, "
            f"{self.patches.get('train', 0)} train / {self.patches.get('test', 0)} test "
            f"patches{scores}>"
        )


# --- the file -------------------------------------------------------------------------


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return str(obj)


def package_versions() -> dict[str, str]:
    """Versions of xharmonise and the packages a model's numbers depend on, as installed."""
    out = {}
    for pkg in ("xharmonise", "torch", "numpy", "xarray"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:  # a missing optional package is just not recorded
            continue
    return out


def _location(
    path: Any, storage_options: Any
) -> tuple[fsspec.AbstractFileSystem | None, Path | str]:
    """(None, a local path) or (the filesystem, the path in it) of a model file."""
    if not isinstance(path, str | os.PathLike) or not isinstance(os.fspath(path), str):
        raise InputTypeError(
            f"path={path!r} is a {type_name(path)}: give the model file's path or fsspec URL "
            "as a str or pathlib.Path, e.g. 'model.safetensors' or 's3://bucket/m.safetensors'"
        )
    text = os.fspath(path)
    if not text.strip() or "\x00" in text:
        raise ModelFileError(
            f"path={path!r} is {'empty' if not text.strip() else 'not a path (NUL character)'}: "
            "give a file path, e.g. 'model.safetensors'"
        )
    if storage_options is not None and not isinstance(storage_options, dict):
        raise InputTypeError(
            f"storage_options={storage_options!r} is a {type_name(storage_options)}: give a "
            "dict of fsspec options (e.g. {'anon': True}) or None"
        )
    if "://" not in text:
        if storage_options:
            raise InputValueError(
                f"storage_options= apply to fsspec URLs, and {text} is a local path: drop "
                "them, or give a URL such as 's3://bucket/model.safetensors'"
            )
        return None, Path(text)
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    try:
        fs, root = fsspec.core.url_to_fs(text, **(storage_options or {}))
    except (ImportError, ValueError, TypeError) as err:
        raise ModelFileError(
            f"cannot open {text} ({err}): check the URL's protocol and install its fsspec "
            "backend (e.g. s3fs for s3://), or give a local path"
        ) from None
    if isinstance(fs, LocalFileSystem):
        return None, Path(root)
    return fs, root


def _encode(model: Harmoniser) -> bytes:
    """The safetensors bytes of a model, in the current format."""
    from safetensors.numpy import save as to_bytes

    m, r = model.mapping, model.fit_report
    tensors = {"linear": np.ascontiguousarray(m.linear, dtype=np.float64)}
    for name, values in r.samples.items():
        tensors[f"samples.{name}"] = np.ascontiguousarray(values, dtype=np.float32)
    net_config = None
    if m.net is not None:
        from xharmonise.models import network_spec

        spec = network_spec(m.net)
        net_config = spec["config"]
        tensors.update({f"net.{k}": np.ascontiguousarray(v) for k, v in spec["state"].items()})
    meta = {
        "format": FORMAT,
        "mapping": {
            "method": m.method,
            "src_bands": list(m.src_bands),
            "ref_bands": list(m.ref_bands),
            "factor": m.factor,
            "sigmas": list(m.sigmas),
            "src_scale": m.src_scale,
            "src_offset": m.src_offset,
            "src_dtype": m.src_dtype,
            "variance": m.variance,
            "grid": m.grid.to_json(),
            "applied_shift": None if m.applied_shift is None else list(m.applied_shift),
            "net_config": _jsonable(net_config),
            "calibration": None if m.calibration is None else m.calibration.to_dict(),
            "domain": None if m.domain is None else m.domain.to_dict(),
        },
        "fit_report": {
            "metrics": r.metrics.to_dict(),
            "history": _jsonable(r.history),
            "patches": _jsonable(r.patches),
            "shift_estimate": None if r.shift_estimate is None else r.shift_estimate.to_dict(),
            "versions": dict(r.versions),
            "dates": _jsonable(r.dates),
            "date_metrics": None if r.date_metrics is None else r.date_metrics.to_dict(),
            "calibration_scores": (
                None if r.calibration_scores is None else r.calibration_scores.to_dict()
            ),
            "sampling": None if r.sampling is None else dict(r.sampling),
        },
        "saved_by": package_versions(),
    }
    return to_bytes(tensors, metadata={"xharmonise": json.dumps(meta)})


def _destination(
    path: Any, storage_options: dict[str, Any] | None
) -> tuple[fsspec.AbstractFileSystem | None, Path | str]:
    """:func:`_location` of a model file to write, refused when it cannot be one."""
    fs, where = _location(path, storage_options)
    if fs is None:
        assert isinstance(where, Path)
        if where.is_dir():
            raise ModelFileError(
                f"{where} is a folder: give a file path, e.g. {where / 'model.safetensors'}"
            )
        folder = where.parent
        if not folder.is_dir():
            raise ModelFileError(
                f"cannot write {where}: the folder {folder} "
                f"{'is a file' if folder.exists() else 'does not exist'}: create the folder "
                "first or choose another path"
            )
    elif fs.isdir(where):
        raise ModelFileError(
            f"{path} is a folder: give a file URL, e.g. {str(path).rstrip('/')}/model.safetensors"
        )
    return fs, where


def check_destination(path: Any, *, storage_options: dict[str, Any] | None = None) -> None:
    """Refuse a destination :func:`save` would refuse, before the work that makes the model.

    Raises
    ------
    ModelFileError
        The path is a folder, its folder does not exist, or the URL cannot be opened.
    InputTypeError
        The path is not a string or path-like.

    Examples
    --------
    >>> check_destination("/no/such/folder/model.safetensors")
    Traceback (most recent call last):
        ...
    xharmonise.errors.ModelFileError: cannot write /no/such/folder/model.safetensors: ...
    """
    _destination(path, storage_options)


def _write_local(path: Path, data: bytes) -> None:
    """Write next to ``path`` and rename into place: a crash never leaves half a model."""
    folder = path.parent
    tmp = folder / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        # Mode 0o666 as open() uses, so the umask sets the file's permissions (mkstemp's
        # 0o600 would make a model others cannot read).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise ModelFileError(
            f"cannot write {path} ({err.strerror or err}): check the folder's permissions "
            "and free space, or choose another path"
        ) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def save(
    model: Harmoniser,
    path: str | os.PathLike,
    *,
    storage_options: dict[str, Any] | None = None,
) -> Path | str:
    """Write a model to one safetensors file: weights as tensors, the rest as JSON.

    Nothing is pickled, so loading a file cannot run code. A local file is written next to
    its destination and renamed into place, so a crash never leaves half a model, with
    the permissions the umask gives new files; a remote one is written in one put.

    Parameters
    ----------
    model : Harmoniser
        The model to write.
    path : str or path-like
        Destination, conventionally ``*.safetensors``: a local path or an fsspec URL
        (``s3://bucket/model.safetensors``, ``memory://model.safetensors``).
    storage_options : dict, optional
        fsspec options for URLs (e.g. ``{"client_kwargs": {"endpoint_url": ...}}``).

    Returns
    -------
    pathlib.Path or str
        The local path written (``file://`` URLs included), or the URL as given.

    Raises
    ------
    ModelFileError
        The path is a folder, its folder does not exist, or it cannot be written.
    InputTypeError
        The model is no Harmoniser, the path not a string or path-like, or the options
        not a dict.
    InputValueError
        ``storage_options`` with a local path.

    Examples
    --------
    >>> import tempfile, pathlib, xharmonise
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((200, 200), seed=0)
    >>> model = xharmonise.fit(pair.src, pair.ref, method="linear", patch_size=8)
    >>> save(model, "memory://doc/model.safetensors")
    'memory://doc/model.safetensors'
    """
    if not isinstance(model, Harmoniser):
        raise InputTypeError(
            f"model is a {type_name(model)}: give a Harmoniser (from xharmonise.fit or load)"
        )
    fs, where = _destination(path, storage_options)
    data = _encode(model)
    if fs is None:
        assert isinstance(where, Path)
        _write_local(where, data)
        return where
    assert isinstance(where, str)
    try:
        fs.pipe_file(where, data)
    except (OSError, ValueError) as err:
        raise ModelFileError(
            f"cannot write {path} ({err}): check the bucket, the credentials in "
            "storage_options and the permissions"
        ) from None
    return os.fspath(path)


class _Damaged(Exception):
    """A model file's metadata misses a field or holds a wrong value (for :func:`load`)."""


# Fields of both formats: key -> (JSON type, description).
_MAPPING_FIELDS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "method": (str, "a method name"),
    "src_bands": (list, "a list of band names"),
    "ref_bands": (list, "a list of band names"),
    "factor": (int, "an integer"),
    "sigmas": (list, "a list of numbers"),
    "src_scale": ((int, float), "a number"),
    "src_offset": ((int, float), "a number"),
    "src_dtype": (str, "a dtype name"),
    "variance": (bool, "true or false"),
    "net_config": ((dict, type(None)), "a dict or null"),
}
_REPORT_FIELDS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "metrics": (dict, "a table"),
    "history": (dict, "a dict"),
    "patches": (dict, "a dict"),
    "versions": (dict, "a dict"),
}
# The grid as format 1 wrote it (PairGrid.to_json without ref_rows/ref_cols).
_GRID_1_FIELDS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "factor": (int, "an integer"),
    "crs": (str, "a CRS"),
    "ref_transform": (list, "six numbers"),
    "ref_shape": (list, "two integers"),
    "src_resolution": ((int, float), "a number"),
}
_FORMAT_1_FIELDS = {
    **_MAPPING_FIELDS,
    **_REPORT_FIELDS,
    "grid": (dict, "a dict"),
    "coregistration": ((dict, type(None)), "a dict or null"),
}
_FORMAT_2_FIELDS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "mapping": (dict, "a dict"),
    "fit_report": (dict, "a dict"),
    "saved_by": (dict, "a dict"),
}
_MAPPING_2_FIELDS = {
    **_MAPPING_FIELDS,
    "grid": (dict, "a dict"),
    "applied_shift": ((list, type(None)), "[east, north] or null"),
}
_REPORT_2_FIELDS = {**_REPORT_FIELDS, "shift_estimate": ((dict, type(None)), "a dict or null")}
# fit's sampling options as FitReport.sampling holds them (FitReport checks their limits).
_SAMPLING_FIELDS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "patch_size": (int, "an integer"),
    "test_fraction": ((int, float), "a number"),
    "max_patches": ((int, type(None)), "an integer or null"),
    "seed": (int, "an integer"),
}
# What every network's config() holds (the rest is the architecture's own).
_NET_FIELDS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "method": (str, "a method name"),
    "n_bands": (int, "an integer"),
    "variance": (bool, "true or false"),
}


def _require(
    d: dict[str, Any],
    fields: dict[str, tuple[type | tuple[type, ...], str]],
    where: str = "",
    optional: bool = False,
) -> None:
    """Every field present (unless ``optional``) with its JSON type, or :class:`_Damaged`
    naming the first not."""
    for key, (kind, what) in fields.items():
        if key not in d:
            if optional:
                continue
            raise _Damaged(f"no {where}{key!r} entry")
        value = d[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
            raise _Damaged(f"{where}{key!r} is {value!r}, not {what}")


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _network(cfg: dict[str, Any] | None, tensors: dict[str, np.ndarray], m: dict[str, Any]) -> Any:
    """The trained network rebuilt from its config and weights, or None."""
    if cfg is None:
        return None
    _require(cfg, _NET_FIELDS, "net_config ")
    found = (cfg["method"], cfg["n_bands"], cfg["variance"])
    if found != (m["method"], len(m["ref_bands"]), m["variance"]):
        raise _Damaged(f"its network {cfg!r} is not a {m['method']} of {len(m['ref_bands'])} bands")
    from xharmonise.models import network_from_spec

    state = {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}
    try:
        return network_from_spec({"config": cfg, "state": state})
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise _Damaged(f"its network cannot be rebuilt from its weights: {err}") from None


def _model(
    m: dict[str, Any],
    r: dict[str, Any],
    tensors: dict[str, np.ndarray],
    *,
    grid: PairGrid,
    applied_shift: tuple[float, float] | None,
    shift_estimate: ShiftEstimate | None,
    calibration: Calibration | None = None,
    calibration_scores: xr.DataArray | None = None,
    domain: Domain | None = None,
    sampling: dict[str, Any] | None = None,
) -> Harmoniser:
    """A Harmoniser from the fields common to every format."""
    method(m["method"])  # an unknown method is named as such, before its network is built
    if "linear" not in tensors:
        raise _Damaged("no 'linear' tensor")
    try:
        metrics = xr.DataArray.from_dict(r["metrics"])
    except (KeyError, TypeError, ValueError) as err:
        raise _Damaged(f"unreadable metrics: {err}") from None
    mapping = Mapping(
        method=m["method"],
        src_bands=m["src_bands"],
        ref_bands=m["ref_bands"],
        factor=m["factor"],
        sigmas=m["sigmas"],
        src_scale=m["src_scale"],
        src_offset=m["src_offset"],
        src_dtype=m["src_dtype"],
        linear=tensors["linear"],
        net=_network(m["net_config"], tensors, m),
        variance=m["variance"],
        grid=grid,
        applied_shift=applied_shift,
        calibration=calibration,
        domain=domain,
    )
    report = FitReport(
        metrics=metrics,
        history=r["history"],
        # Files from before per-pixel masks: a patch was used whole or not at all.
        patches={"partial": 0, **r["patches"]} if "valid" in r["patches"] else r["patches"],
        samples={k[8:]: v for k, v in tensors.items() if k.startswith("samples.")},
        shift_estimate=shift_estimate,
        versions=r["versions"],
        # Files from before reference time series have neither.
        dates=r.get("dates") or {},
        date_metrics=_date_metrics(r.get("date_metrics")),
        calibration_scores=calibration_scores,
        sampling=sampling,
    )
    return Harmoniser(mapping=mapping, fit_report=report)


def _date_metrics(table: Any) -> xr.DataArray | None:
    if table is None:
        return None
    try:
        return xr.DataArray.from_dict(table)
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFileError(
            f"the model file's date_metrics cannot be read ({err}): the file is corrupted; "
            "fit the model again"
        ) from err


def _read_format_1(meta: dict[str, Any], tensors: dict[str, np.ndarray]) -> Harmoniser:
    """Release 0.1.0's layout: one flat object, ``coregistration`` = estimate + applied."""
    _require(meta, _FORMAT_1_FIELDS)
    _require(meta["grid"], _GRID_1_FIELDS, "grid ")
    rows, cols = meta["grid"]["ref_shape"]
    # Format 1 did not record where the grid lay in the fit's reference array, and nothing
    # after the fit reads it: the grid is read as lying at its own origin.
    grid = PairGrid.from_json(dict(meta["grid"], ref_rows=[0, rows], ref_cols=[0, cols]))
    reg = meta["coregistration"]
    estimate, applied = None, None
    if reg is not None:
        _require(reg, {"applied": (bool, "true or false")}, "coregistration ")
        estimate = ShiftEstimate.from_dict({k: v for k, v in reg.items() if k != "applied"})
        if reg["applied"]:
            applied = (estimate.east, estimate.north)
    if meta["net_config"] is None and meta["variance"] is True:
        # 0.1.0 let fit(method="linear", variance=True) through and saved variance=true
        # for a model without a head (its predict gave all-NaN variance planes): read it
        # as what it is, a model without a variance head.
        meta = dict(meta, variance=False)
    return _model(meta, meta, tensors, grid=grid, applied_shift=applied, shift_estimate=estimate)


def _read_format_2(meta: dict[str, Any], tensors: dict[str, np.ndarray]) -> Harmoniser:
    """This release's layout: ``mapping`` and ``fit_report`` objects."""
    _require(meta, _FORMAT_2_FIELDS)
    m, r = meta["mapping"], meta["fit_report"]
    _require(m, _MAPPING_2_FIELDS, "mapping ")
    _require(r, _REPORT_2_FIELDS, "fit_report ")
    shift = m["applied_shift"]
    est = r["shift_estimate"]
    # Optional: files written before calibration existed have neither (no calibration).
    _require(m, {"calibration": ((dict, type(None)), "a dict or null")}, "mapping ", True)
    _require(r, {"calibration_scores": ((dict, type(None)), "a dict or null")}, "fit_report ", True)
    # Optional too: files written before applicability existed have no domain, and those
    # written before fit recorded its sampling options have none.
    _require(m, {"domain": ((dict, type(None)), "a dict or null")}, "mapping ", True)
    _require(r, {"sampling": ((dict, type(None)), "a dict or null")}, "fit_report ", True)
    sampling = r.get("sampling")
    if sampling is not None:
        _require(sampling, _SAMPLING_FIELDS, "fit_report sampling ")
    calibration, scores, domain = None, None, None
    try:
        if m.get("domain") is not None:
            domain = Domain.from_dict(m["domain"])
        if m.get("calibration") is not None:
            calibration = Calibration.from_dict(m["calibration"])
        if r.get("calibration_scores") is not None:
            scores = xr.DataArray.from_dict(r["calibration_scores"])
    except (KeyError, TypeError, ValueError) as err:
        raise _Damaged(f"unreadable calibration or domain: {err}") from None
    return _model(
        m,
        r,
        tensors,
        grid=PairGrid.from_json(m["grid"]),
        applied_shift=None if shift is None else tuple(shift),
        shift_estimate=None if est is None else ShiftEstimate.from_dict(est),
        calibration=calibration,
        calibration_scores=scores,
        domain=domain,
        sampling=sampling,
    )


_READERS = {FORMAT: _read_format_2, _FORMAT_1: _read_format_1}
assert tuple(_READERS) == FORMATS_READ, "every format read has its reader"


def _read_bytes(fs: fsspec.AbstractFileSystem | None, where: Path | str, path: Any) -> bytes:
    if fs is None:
        assert isinstance(where, Path)
        if not where.is_file():
            raise ModelFileError(f"no model file at {where}: check the path")
        try:
            return where.read_bytes()
        except OSError as err:
            raise ModelFileError(
                f"cannot read {where} ({err.strerror or err}): check its permissions"
            ) from None
    try:
        return bytes(fs.cat_file(where))
    except FileNotFoundError:
        raise ModelFileError(f"no model file at {path}: check the URL") from None
    except (OSError, ValueError) as err:
        raise ModelFileError(
            f"cannot read {path} ({err}): check the URL, the credentials in storage_options "
            "and the permissions"
        ) from None


def load(path: str | os.PathLike, *, storage_options: dict[str, Any] | None = None) -> Harmoniser:
    """Read a model written by :func:`save`, in this release's format or an earlier one.

    Only the safetensors format is read: a pickle, a truncated or a corrupted file is
    refused before anything in it is interpreted as code. Formats read:
    :data:`FORMATS_READ` (``xharmonise-model/1`` is release 0.1.0's).

    Parameters
    ----------
    path : str or path-like
        A ``.safetensors`` model file: a local path or an fsspec URL.
    storage_options : dict, optional
        fsspec options for URLs.

    Returns
    -------
    Harmoniser

    Raises
    ------
    ModelFileError
        Missing, truncated, corrupted, foreign or unsafe file; a format this release does
        not read (the message names it and those it reads); a field of its format missing
        or wrong.
    InputTypeError
        The path is not a string or path-like, or the options not a dict.
    InputValueError
        ``storage_options`` with a local path.

    Examples
    --------
    >>> import tempfile, pathlib, xharmonise
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((200, 200), seed=0)
    >>> model = xharmonise.fit(pair.src, pair.ref, method="linear", patch_size=8)
    >>> path = model.save(pathlib.Path(tempfile.mkdtemp()) / "model.safetensors")
    >>> bool((load(path).linear == model.linear).all())
    True
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load as from_bytes

    fs, where = _location(path, storage_options)
    data = _read_bytes(fs, where, path)
    try:
        tensors = from_bytes(data)
        # The header (checked by from_bytes): an 8-byte little-endian length, then JSON.
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + size])
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFileError(
            f"{path} is not a readable safetensors model ({err}); it may be truncated, "
            "corrupted or in another format (pickles are refused): save it again with "
            "xharmonise.save"
        ) from None
    meta_text = (header.get("__metadata__") or {}).get("xharmonise")
    try:
        meta = json.loads(meta_text) if meta_text else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict):
        raise ModelFileError(
            f"{path} is a safetensors file but not an xharmonise model (no xharmonise "
            "metadata): save models with xharmonise.save"
        )
    found = meta["format"] if "format" in meta else None
    reader = _READERS[found] if isinstance(found, str) and found in _READERS else None
    if reader is None:
        raise ModelFileError(
            f"{path} is an xharmonise model of format {found!r}; this release reads "
            f"{', '.join(map(repr, FORMATS_READ))}: load it with the xharmonise release that "
            "wrote it, or fit the model again"
        )
    try:
        return reader(meta, tensors)
    except (_Damaged, HarmoniseError, TypeError, ValueError) as err:
        # HarmoniseError: the Mapping's and records' own checks; Type/ValueError: values
        # of the right JSON type and the wrong shape (a 3-element ref_shape...).
        raise ModelFileError(
            f"{path} is a damaged xharmonise model of format {found!r} ({err}): save the "
            "model again with xharmonise.save"
        ) from None
