"""Calibrated σ²: a per-band map fitted on the validation patches, and its diagnostics.

Every fitted model carries a :class:`Calibration`, fitted after training on the
validation patches (never the test patches), that :func:`xharmonise.predict` applies:

``kind="head"``
    The variance head's σ, mapped per band by a monotone function of itself: the
    validation pixels are binned by the head's σ (up to ``MAX_BINS`` quantile bins of at
    least ``MIN_BIN_PIXELS`` pixels), each bin gets its median head σ times the scale of
    its residuals over the head's σ, the bins' values are made non-decreasing (isotonic
    regression) and interpolated in log-log; beyond the outer bins σ is scaled by the
    outer bin's factor, so the head's ranking of unmasked clouds is kept.
``kind="empirical"``
    For models without a head: σ as a function of the source brightness (the mean of the
    source bands' reflectance), from the validation residuals binned by brightness,
    interpolated linearly and held constant beyond the outer bins.

The σ of an empirical bin is the geometric mean of the two Gaussian readings of its
absolute residuals, the 68.27 % quantile and the 95 % quantile / 1.96: residuals peaked
at zero with heavy tails (a scale mixture) cannot match both a calibrated Gaussian's ±1σ
and ±1.96σ coverage, and this splits the error between the two. Quantiles, not the mean
of r², so that a few gross residuals move little.

The σ of a head's bin is the head's σ times a factor read from ``r / σ`` (the residuals
over the head's σ), clipped: the root mean square of ``r / σ`` within ±``CLIP`` (3),
corrected for the clipping (a Gaussian's mean square within ±3σ is 0.973 σ²), iterated
from the quantile reading. Unmasked clouds in the validation patches are not a few gross
residuals but a share of them (10 % of the cloudy pair's validation pixels, half of its
top bin's), in the bins of clear pixels too, since the head's σ ranks them well but not
perfectly: the quantile reading took them in and made the clear pixels' σ 1.25x too wide.
Reading the residuals themselves, clipped, pooled pixels whose head σ differs within a bin
(the top bin spans clear bright ground and cloud), heavy-tailed together, so that the
clipped reading was too wide at ±3σ and, at ±2σ, too narrow on the cloud-free pairs. Over
the head's σ the pixels of a bin share one scale, which the clip reads without that bias.
Measured with ``benchmarks/calibration.py`` (CalibNet with its Student-t head, 3000 steps;
figures in ``docs/method.md``).

A head whose validation holds fewer than ``MIN_PATCHES`` patches is left uncalibrated,
and says so (:attr:`Calibration.skipped`); an empirical σ is then one value per band.
Measured on simulated TOA and cloudy pairs at 1000 training steps: with 3 or 4
validation patches of 16², the map brought ±1.96σ coverage on held-out clear pixels
from 0.98-1.00 to 0.92-0.98 on six pairs (with a single patch, on two 400² pairs, from
0.98-1.00 to 0.94-0.96 too); the earlier single per-band scale made coverage worse
(0.66-0.70) on a 400² pair at 200 steps, and an empirical σ binned on one cloudy patch
fell to 0.80-0.94. The threshold of three is a caution, not a measured optimum: patches
are spatially correlated, and one or two are a small sample of a scene.

The diagnostics (:func:`calibration_table`), measured on the test patches: coverage of
±1σ, ±1.96σ and ±2.58σ (0.683, 0.950 and 0.990 for a calibrated Gaussian) and the mean
Gaussian negative log-likelihood, before and after.

This module needs no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import xarray as xr

from xharmonise.errors import InputValueError

__all__ = [
    "CLIP",
    "LEVELS",
    "MAX_BINS",
    "MIN_BIN_PIXELS",
    "MIN_PATCHES",
    "Calibration",
    "calibration_table",
    "coverage_table",
    "fit_calibration",
    "source_brightness",
]

#: The ±kσ intervals whose coverage is reported, and their nominal Gaussian coverage.
LEVELS: dict[float, float] = {1.0: 0.6827, 1.96: 0.9500, 2.58: 0.9901}
#: At most this many bins per band.
MAX_BINS = 10
#: At least this many validation pixels per bin.
MIN_BIN_PIXELS = 300
#: Fewer validation patches than this: a head is left uncalibrated, an empirical σ is one
#: value per band.
MIN_PATCHES = 3

Kind = Literal["head", "empirical"]


@dataclass(frozen=True)
class Calibration:
    """A per-band map to calibrated σ, fitted on the validation patches.

    Attributes
    ----------
    kind : {"head", "empirical"}
        What σ² ``predict`` returns: the variance head's, mapped; or one estimated from
        the validation residuals for a model without a head.
    knots : tuple of tuple of float
        Per band, increasing covariate values: the head's σ (``"head"``) or the source
        brightness (``"empirical"``). Empty for a skipped calibration.
    sigmas : tuple of tuple of float
        Per band, the calibrated σ at each knot (positive).
    patches, pixels : int
        Validation patches, and the fewest validation pixels of any band, it was fitted on.
    skipped : str or None
        Why a head's σ is left as it is (too small a validation); None when calibrated.

    Examples
    --------
    >>> cal = Calibration("empirical", ((0.1, 0.3),), ((0.01, 0.03),), patches=9, pixels=2000)
    >>> v = cal.variance(np.full((1, 1, 2), np.nan), np.array([[[0.2, 0.5]]]))
    >>> v.astype(float).round(6).tolist()
    [[[0.0004, 0.0009]]]
    """

    kind: Kind
    knots: tuple[tuple[float, ...], ...]
    sigmas: tuple[tuple[float, ...], ...]
    patches: int
    pixels: int
    skipped: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("head", "empirical"):
            raise InputValueError(f"kind {self.kind!r}: give 'head' or 'empirical'")
        knots = tuple(tuple(float(v) for v in k) for k in self.knots)
        sigmas = tuple(tuple(float(v) for v in s) for s in self.sigmas)
        if len(knots) != len(sigmas) or any(
            len(k) != len(s) for k, s in zip(knots, sigmas, strict=True)
        ):
            raise InputValueError("knots and sigmas differ in shape: give one σ per knot and band")
        for k, s in zip(knots, sigmas, strict=True):
            if self.skipped is None and not k:
                raise InputValueError("a band without knots: give one at least, or skipped=")
            if not all(np.isfinite(k)) or np.any(np.diff(k) <= 0):
                raise InputValueError(f"knots {k} are not finite and increasing")
            if not all(np.isfinite(s)) or any(v <= 0 for v in s):
                raise InputValueError(f"sigmas {s} are not finite and positive")
            if self.kind == "head" and any(v <= 0 for v in k):
                raise InputValueError(f"a head's knots are σ values, positive: {k}")
        object.__setattr__(self, "knots", knots)
        object.__setattr__(self, "sigmas", sigmas)
        object.__setattr__(self, "patches", int(self.patches))
        object.__setattr__(self, "pixels", int(self.pixels))

    @property
    def n_bands(self) -> int:
        """Bands the map covers."""
        return len(self.knots)

    @property
    def applied(self) -> bool:
        """Whether ``predict`` changes σ² with it (False for a skipped head calibration)."""
        return self.skipped is None

    def variance(
        self, raw: np.ndarray, brightness: np.ndarray | None = None, *, axis: int = 0
    ) -> np.ndarray:
        """Calibrated σ² (float32), bands at ``axis``.

        Parameters
        ----------
        raw : numpy.ndarray
            ``"head"``: the head's σ², bands at ``axis``. ``"empirical"``: only its shape
            is read (the prediction will do).
        brightness : numpy.ndarray, optional
            ``"empirical"``: the source brightness (:func:`source_brightness`), ``raw``'s
            shape without the band axis. NaN stays NaN.
        axis : int
            The band axis of ``raw``.

        Returns
        -------
        numpy.ndarray
            float32, ``raw``'s shape.

        Examples
        --------
        A head whose σ is twice too large, mapped at one knot (σ 0.02 -> 0.01):

        >>> cal = Calibration("head", ((0.02,),), ((0.01,),), patches=9, pixels=900)
        >>> cal.variance(np.array([[0.02**2, 0.2**2]])).astype(float).round(6).tolist()
        [[0.0001, 0.01]]
        """
        raw = np.asarray(raw)
        if self.kind == "head" and not self.applied:
            return raw.astype(np.float32)
        if self.kind == "empirical" and brightness is None:
            raise InputValueError("an empirical σ needs the source brightness")
        out = np.empty(raw.shape, np.float32)
        moved = np.moveaxis(out, axis, 0)
        source = np.moveaxis(raw, axis, 0)
        for b in range(self.n_bands):
            knots, sigmas = np.asarray(self.knots[b]), np.asarray(self.sigmas[b])
            if self.kind == "head":
                # In log σ² (a few passes over the block: predict applies this per chunk).
                xs, ys = _log_variance_knots(knots, sigmas)
                with np.errstate(divide="ignore", invalid="ignore"):
                    log_var = np.log(source[b].astype(np.float32, copy=False))
                moved[b] = np.exp(np.interp(log_var, xs, ys))
            else:
                # np.interp keeps NaN (no-data) as NaN.
                moved[b] = np.interp(np.asarray(brightness), knots, sigmas) ** 2
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (:meth:`from_dict` reads them back).

        Examples
        --------
        >>> cal = Calibration("head", ((0.02,),), ((0.01,),), patches=9, pixels=900)
        >>> cal.to_dict()["knots"], Calibration.from_dict(cal.to_dict()) == cal
        ([[0.02]], True)
        """
        return {
            "kind": self.kind,
            "knots": [list(k) for k in self.knots],
            "sigmas": [list(s) for s in self.sigmas],
            "patches": self.patches,
            "pixels": self.pixels,
            "skipped": self.skipped,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        """The calibration :meth:`to_dict` wrote.

        Examples
        --------
        >>> d = {"kind": "empirical", "knots": [[0.1]], "sigmas": [[0.003]],
        ...      "patches": 2, "pixels": 512}
        >>> Calibration.from_dict(d).kind
        'empirical'
        """
        return cls(
            kind=d["kind"],
            knots=tuple(tuple(k) for k in d["knots"]),
            sigmas=tuple(tuple(s) for s in d["sigmas"]),
            patches=d["patches"],
            pixels=d["pixels"],
            skipped=d.get("skipped"),
        )


def _log_variance_knots(knots: np.ndarray, sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The head's map as knots of log σ² -> log σ², linear between them, with a knot far
    out at each end on the slope 1 through the outer one: beyond the outer bins σ² is
    scaled by the outer bin's factor (clouds keep their rank), in one np.interp."""
    xs, ys = 2 * np.log(knots), 2 * np.log(sigmas)
    far = 200.0  # e^200: beyond any float32 σ²
    return (
        np.concatenate([[xs[0] - far], xs, [xs[-1] + far]]),
        np.concatenate([[ys[0] - far], ys, [ys[-1] + far]]),
    )


def source_brightness(src: np.ndarray, *, axis: int = 0) -> np.ndarray:
    """The empirical σ's covariate: the mean of the source bands' reflectance.

    Examples
    --------
    >>> source_brightness(np.array([[0.1, 0.2], [0.3, np.nan]])).astype(float).round(3).tolist()
    [0.2, nan]
    """
    return np.asarray(src).mean(axis=axis, dtype=np.float32)


def _bin_sigma(residual: np.ndarray) -> float:
    """σ of a bin: the geometric mean of its ±1σ and ±1.96σ Gaussian readings."""
    a = np.abs(residual)
    q1, q2 = np.quantile(a, [LEVELS[1.0], LEVELS[1.96]])
    return float(np.sqrt(max(q1, 1e-12) * max(q2 / 1.96, 1e-12)))


#: A head's bins leave out residuals over σ beyond this many times their scale (unmasked
#: clouds, mostly).
CLIP = 3.0
# E[z² | |z| < CLIP] of a standard Gaussian: the clipped mean square's bias.
_CLIPPED_SECOND_MOMENT = 1 - 2 * CLIP * math.exp(-(CLIP**2) / 2) / math.sqrt(2 * math.pi) / (
    math.erf(CLIP / math.sqrt(2))
)


def _clipped_sigma(residual: np.ndarray) -> float:
    """Scale of a head's bin, read from its residuals over the head's σ: their root mean
    square within ±CLIP times the scale, corrected for the clipping, iterated from the
    quantile reading until the scale settles."""
    a2 = np.square(residual)
    sigma = _bin_sigma(residual)
    for _ in range(100):
        inside = a2[a2 < (CLIP * sigma) ** 2]
        if inside.size == 0:
            break
        new = max(float(np.sqrt(inside.mean() / _CLIPPED_SECOND_MOMENT)), 1e-12)
        if abs(new - sigma) <= 1e-6 * sigma:
            return new
        sigma = new
    return sigma


def _isotonic(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted non-decreasing least-squares fit (pool adjacent violators)."""
    values: list[float] = []
    weights: list[float] = []
    counts: list[int] = []
    for yi, wi in zip(y.tolist(), w.tolist(), strict=True):
        values.append(yi)
        weights.append(wi)
        counts.append(1)
        while len(values) > 1 and values[-2] > values[-1]:
            total = weights[-2] + weights[-1]
            merged = (values[-2] * weights[-2] + values[-1] * weights[-1]) / total
            values[-2:] = [merged]
            weights[-2:] = [total]
            counts[-2:] = [counts[-2] + counts[-1]]
    return np.repeat(values, counts)


def _fit_band(x: np.ndarray, r: np.ndarray, kind: Kind, bins: int) -> tuple[list, list]:
    ok = np.isfinite(x) & np.isfinite(r) & ((x > 0) if kind == "head" else True)
    x, r = x[ok], r[ok]
    if x.size == 0:
        raise InputValueError("no finite validation residual in a band")
    k = int(np.clip(x.size // MIN_BIN_PIXELS, 1, bins))
    order = np.argsort(x, kind="stable")
    knots, sigmas, weights = [], [], []
    for part in np.array_split(order, k):
        knots.append(float(np.median(x[part])))
        if kind == "head":
            # The bin's factor on the head's σ, read from r / σ: the head's σ varies within
            # a bin, and residuals of different σ pooled are heavy-tailed, which a clipped
            # reading of r itself takes for outliers.
            sigmas.append(knots[-1] * _clipped_sigma(r[part] / x[part]))
        else:
            sigmas.append(_bin_sigma(r[part]))
        weights.append(part.size)
    knots_a, sigmas_a = np.asarray(knots), np.asarray(sigmas)
    if kind == "head":
        sigmas_a = np.exp(_isotonic(np.log(sigmas_a), np.asarray(weights, float)))
    # Ties in the covariate (a constant σ) give equal knots: one knot each, σ averaged.
    knots_a, tie = np.unique(knots_a, return_inverse=True)
    sigmas_a = np.bincount(tie, weights=sigmas_a) / np.bincount(tie)
    return knots_a.tolist(), np.maximum(sigmas_a, 1e-12).tolist()


def fit_calibration(
    target: np.ndarray,
    prediction: np.ndarray,
    *,
    variance: np.ndarray | None = None,
    src: np.ndarray | None = None,
    axis: int = 1,
) -> Calibration:
    """Fit the σ map on validation patches.

    Parameters
    ----------
    target, prediction : numpy.ndarray
        (patch, band, y, x) reference and prediction on the validation patches (bands at
        ``axis``); NaN target pixels (masked) are left out.
    variance : numpy.ndarray, optional
        The head's σ², same shape: a ``"head"`` calibration. Without it, ``"empirical"``.
    src : numpy.ndarray, optional
        The source reflectance, same shape (its bands at ``axis``): needed without a head,
        for the brightness.
    axis : int
        The band axis.

    Returns
    -------
    Calibration
        Skipped (head) or one value per band (empirical) when the validation holds
        fewer than ``MIN_PATCHES`` patches (the first axis).

    Examples
    --------
    A head whose σ is 1.4x too large (the issue's finding) is mapped back:

    >>> rng = np.random.default_rng(0)
    >>> sigma = rng.uniform(0.005, 0.02, (20, 1, 16, 16))
    >>> residual = rng.normal(size=sigma.shape) * sigma
    >>> cal = fit_calibration(residual, 0 * residual, variance=(1.4 * sigma) ** 2)
    >>> z = residual / np.sqrt(cal.variance((1.4 * sigma) ** 2, axis=1))
    >>> round(float(np.mean(np.abs(z) <= 1.96)), 2), cal.kind
    (0.95, 'head')
    """
    n_patches = int(target.shape[0]) if target.ndim == 4 else 1
    residual = np.moveaxis(np.asarray(target, np.float64) - prediction, axis, 0)
    n_bands = residual.shape[0]
    residual = residual.reshape(n_bands, -1)
    pixels = int(np.isfinite(residual).sum(axis=1).min())
    few = n_patches < MIN_PATCHES
    if variance is not None:
        kind: Kind = "head"
        if few:
            return Calibration(
                "head",
                ((),) * n_bands,
                ((),) * n_bands,
                patches=n_patches,
                pixels=pixels,
                skipped=(
                    f"{n_patches} validation patch(es), fewer than {MIN_PATCHES}: too few to "
                    "calibrate on"
                ),
            )
        x = np.sqrt(np.moveaxis(np.asarray(variance, np.float64), axis, 0).reshape(n_bands, -1))
    else:
        if src is None:
            raise InputValueError("an empirical σ needs the validation source (src=)")
        kind = "empirical"
        bright = source_brightness(src, axis=axis).reshape(-1)
        x = np.broadcast_to(bright, residual.shape)
    bins = 1 if few else MAX_BINS
    fitted = [_fit_band(x[b], residual[b], kind, bins) for b in range(n_bands)]
    return Calibration(
        kind,
        tuple(tuple(k) for k, _ in fitted),
        tuple(tuple(s) for _, s in fitted),
        patches=n_patches,
        pixels=pixels,
    )


def coverage_table(
    target: np.ndarray,
    prediction: np.ndarray,
    variance: np.ndarray,
    bands: Sequence[str],
    *,
    axis: int = 1,
) -> xr.DataArray:
    """Coverage and mean NLL per band of one σ².

    Parameters
    ----------
    target, prediction : numpy.ndarray
        Held-out reference and prediction (same shape, bands at ``axis``); pixels NaN in
        either, or without a finite positive σ², are left out.
    variance : numpy.ndarray
        σ², same shape.
    bands : sequence of str
        Band names.
    axis : int, default 1
        The band axis.

    Returns
    -------
    xarray.DataArray
        (band, measure): ``coverage_1``, ``coverage_1.96``, ``coverage_2.58`` (share of
        pixels within ±kσ) and ``nll`` (mean Gaussian negative log-likelihood, with its
        ½ ln 2π), with the calibrated Gaussian's values as coordinate ``nominal`` (NaN
        for ``nll``).

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> r = rng.normal(size=(1, 1, 50_000)) * 0.01
    >>> t = coverage_table(r, 0 * r, np.full_like(r, 1e-4), ["B4"])
    >>> t.sel(measure="coverage_1.96").round(2).values.tolist()
    [0.95]
    """
    residual = np.moveaxis(np.asarray(target, np.float64) - prediction, axis, 0)
    n = residual.shape[0]
    residual = residual.reshape(n, -1)
    measures = [f"coverage_{k:g}" for k in LEVELS] + ["nll"]
    table = np.full((len(bands), len(measures)), np.nan)
    v = np.moveaxis(np.asarray(variance, np.float64), axis, 0).reshape(n, -1)
    for b in range(n):
        ok = np.isfinite(residual[b]) & np.isfinite(v[b]) & (v[b] > 0)
        if not ok.any():
            continue
        z = np.abs(residual[b, ok]) / np.sqrt(v[b, ok])
        for m, k in enumerate(LEVELS):
            table[b, m] = float(np.mean(z <= k))
        table[b, -1] = float(np.mean(0.5 * (z**2 + np.log(v[b, ok]) + np.log(2 * np.pi))))
    return xr.DataArray(
        table,
        dims=("band", "measure"),
        coords={
            "band": list(bands),
            "measure": measures,
            "nominal": ("measure", [*LEVELS.values(), np.nan]),
        },
        name="calibration",
    )


def calibration_table(
    target: np.ndarray,
    prediction: np.ndarray,
    before: np.ndarray,
    after: np.ndarray,
    bands: Sequence[str],
    *,
    axis: int = 1,
) -> xr.DataArray:
    """Coverage and mean NLL per band of two σ², ``before`` and ``after`` calibration.

    Parameters
    ----------
    target, prediction : numpy.ndarray
        Held-out reference and prediction (same shape, bands at ``axis``).
    before, after : numpy.ndarray
        σ² before and after the calibration, same shape.
    bands : sequence of str
        Band names.
    axis : int, default 1
        The band axis.

    Returns
    -------
    xarray.DataArray
        (band, measure, stage): the measures of :func:`coverage_table` for the stages
        ``before`` and ``after``.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> r = rng.normal(size=(1, 1, 50_000)) * 0.01
    >>> t = calibration_table(r, 0 * r, np.full_like(r, 0.02**2), np.full_like(r, 1e-4), ["B4"])
    >>> t.sel(measure="coverage_1.96").round(2).values.tolist()
    [[1.0, 0.95]]
    """
    tables = [
        coverage_table(target, prediction, v, bands, axis=axis).drop_vars("nominal")
        for v in (before, after)
    ]
    return (
        xr.concat(tables, dim="stage")
        .assign_coords(stage=["before", "after"])
        .transpose("band", "measure", "stage")
    )
