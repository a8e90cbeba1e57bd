"""Calibration of the variance head's σ² on held-out patches.

The variance head is trained with a Gaussian negative log-likelihood on the training
patches, where it can fit the noise it sees; on unseen pixels its σ is typically too
large or too small by a band-dependent factor. After training, one scale per band is
chosen on the validation patches (never the test patches): σ² is multiplied by the
factor that makes ±1.96σ cover 95 % of the validation residuals. A quantile is used,
not the likelihood's closed form ``mean(r² / σ²)``: that mean is dominated by the
heaviest residuals (unmasked clouds the head already flags), which would inflate every
clear pixel's σ.

The diagnostics, before and after the scale, are measured on the test patches:
coverage of ±1σ, ±1.96σ and ±2.58σ (0.683, 0.950 and 0.990 for a calibrated Gaussian)
and the mean Gaussian negative log-likelihood.

This module needs no torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

__all__ = ["LEVELS", "calibration_table", "variance_scale"]

#: The ±kσ intervals whose coverage is reported, and their nominal Gaussian coverage.
LEVELS: dict[float, float] = {1.0: 0.6827, 1.96: 0.9500, 2.58: 0.9901}
# The interval the scale is fitted on.
_TARGET_K, _TARGET_COVERAGE = 1.96, 0.95


def _standardised(
    target: np.ndarray, prediction: np.ndarray, variance: np.ndarray, axis: int
) -> np.ndarray:
    """|t - p| / σ with the band axis first, flattened per band (NaNs dropped later)."""
    z = np.abs(target.astype(np.float64) - prediction) / np.sqrt(variance.astype(np.float64))
    return np.moveaxis(z, axis, 0).reshape(z.shape[axis], -1)


def variance_scale(
    target: np.ndarray, prediction: np.ndarray, variance: np.ndarray, *, axis: int = 1
) -> np.ndarray:
    """Per-band factor for σ² so that ±1.96σ covers 95 % of these residuals.

    Parameters
    ----------
    target, prediction, variance : numpy.ndarray
        Same shape, the band axis at ``axis``; σ² > 0. Non-finite values are ignored.
    axis : int, default 1
        The band axis ((patch, band, y, x) patches by default).

    Returns
    -------
    numpy.ndarray
        float64 (band,), positive: multiply σ² by it.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> truth_sigma = np.array([0.01, 0.02])[None, :, None]
    >>> residual = rng.normal(size=(1, 2, 100_000)) * truth_sigma
    >>> # A head whose σ is twice too large on band 0 and half on band 1: σ² off 4x.
    >>> var = (truth_sigma * np.array([2.0, 0.5])[None, :, None]) ** 2
    >>> var = np.broadcast_to(var, residual.shape)
    >>> variance_scale(residual, np.zeros_like(residual), var).round(2)
    array([0.25, 4.  ])
    """
    z = _standardised(target, prediction, variance, axis)
    scale = np.ones(z.shape[0])
    for b, row in enumerate(z):
        row = row[np.isfinite(row)]
        if row.size:
            q = float(np.quantile(row, _TARGET_COVERAGE))
            if q > 0:
                scale[b] = (q / _TARGET_K) ** 2
    return scale


def calibration_table(
    target: np.ndarray,
    prediction: np.ndarray,
    variance: np.ndarray,
    scale: np.ndarray,
    bands: Sequence[str],
    *,
    axis: int = 1,
) -> xr.DataArray:
    """Coverage and mean NLL per band, before and after scaling σ² by ``scale``.

    Parameters
    ----------
    target, prediction, variance : numpy.ndarray
        Held-out reference, prediction and σ² (same shape, bands at ``axis``).
    scale : numpy.ndarray
        (band,) factors from :func:`variance_scale`.
    bands : sequence of str
        Band names.
    axis : int, default 1
        The band axis.

    Returns
    -------
    xarray.DataArray
        (band, measure, stage): measures ``coverage_1``, ``coverage_1.96``,
        ``coverage_2.58`` (share of pixels within ±kσ) and ``nll`` (mean Gaussian
        negative log-likelihood, with its ½ ln 2π); stages ``before`` and ``after``.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> r = rng.normal(size=(1, 1, 50_000)) * 0.01
    >>> var = np.full_like(r, 0.02**2)  # σ twice too large
    >>> t = calibration_table(r, np.zeros_like(r), var, variance_scale(r, 0 * r, var), ["B4"])
    >>> t.sel(measure="coverage_1.96").round(2).values.tolist()
    [[1.0, 0.95]]
    """
    z = _standardised(target, prediction, variance, axis)
    log_var = np.moveaxis(np.log(variance.astype(np.float64)), axis, 0).reshape(z.shape)
    measures = [f"coverage_{k:g}" for k in LEVELS] + ["nll"]
    table = np.full((len(bands), len(measures), 2), np.nan)
    for b in range(z.shape[0]):
        ok = np.isfinite(z[b]) & np.isfinite(log_var[b])
        if not ok.any():
            continue
        for s, factor in enumerate((1.0, float(scale[b]))):
            zz = z[b, ok] / np.sqrt(factor)
            for m, k in enumerate(LEVELS):
                table[b, m, s] = float(np.mean(zz <= k))
            nll = 0.5 * (zz**2 + log_var[b, ok] + np.log(factor) + np.log(2 * np.pi))
            table[b, -1, s] = float(nll.mean())
    return xr.DataArray(
        table,
        dims=("band", "measure", "stage"),
        coords={"band": list(bands), "measure": measures, "stage": ["before", "after"]},
        name="calibration",
    )
