"""Per-band regression metrics: RMSE, R², explained variance and maximum error.

NaNs are ignored pixel-wise so callers can pass masked images directly.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

__all__ = ["METRICS", "explained_variance", "max_error", "metric_table", "r2", "rmse"]


def _pairs(target: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # (band, ...) -> (band, n) with pixels valid in both kept; valid sets may differ per band.
    t = np.asarray(target, dtype=np.float64).reshape(target.shape[0], -1)
    p = np.asarray(pred, dtype=np.float64).reshape(pred.shape[0], -1)
    if t.shape != p.shape:
        raise ValueError(f"target {t.shape} and prediction {p.shape} differ in shape")
    return t, p


def _per_band(fn, target: np.ndarray, pred: np.ndarray) -> np.ndarray:
    t, p = _pairs(target, pred)
    out = np.empty(t.shape[0])
    for b in range(t.shape[0]):
        ok = np.isfinite(t[b]) & np.isfinite(p[b])
        out[b] = fn(t[b][ok], p[b][ok]) if ok.any() else np.nan
    return out


def rmse(target: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Root mean square error per band of (band, ...) arrays.

    Examples
    --------
    >>> rmse(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0]])).round(4)
    array([3.5355])
    """
    return _per_band(lambda t, p: np.sqrt(np.mean((t - p) ** 2)), target, pred)


def r2(target: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Coefficient of determination 1 - SS_res / SS_tot per band.

    Examples
    --------
    >>> r2(np.array([[1.0, 2.0, 3.0]]), np.array([[1.0, 2.0, 3.0]]))
    array([1.])
    """
    return _per_band(
        lambda t, p: 1.0 - np.sum((t - p) ** 2) / np.sum((t - t.mean()) ** 2), target, pred
    )


def explained_variance(target: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Explained variance 1 - Var(t - p) / Var(t) per band (blind to a constant bias).

    Examples
    --------
    >>> explained_variance(np.array([[1.0, 2.0, 3.0]]), np.array([[2.0, 3.0, 4.0]]))
    array([1.])
    """
    return _per_band(lambda t, p: 1.0 - np.var(t - p) / np.var(t), target, pred)


def max_error(target: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Largest absolute error per band.

    Examples
    --------
    >>> max_error(np.array([[0.0, 1.0]]), np.array([[0.5, -1.0]]))
    array([2.])
    """
    return _per_band(lambda t, p: np.max(np.abs(t - p)), target, pred)


METRICS = {"rmse": rmse, "r2": r2, "explained_variance": explained_variance, "max_error": max_error}


def metric_table(
    target: np.ndarray, predictions: dict[str, np.ndarray], bands: list[str]
) -> xr.DataArray:
    """All metrics for several predictions of the same target.

    Parameters
    ----------
    target : numpy.ndarray
        Reference values (band, ...).
    predictions : dict of str to numpy.ndarray
        Named predictions (band, ...), e.g. ``{"initial": ..., "linear": ...}``.
    bands : list of str
        Band names, in order.

    Returns
    -------
    xarray.DataArray
        Table with dims (band, metric, stage).

    Examples
    --------
    >>> t = np.array([[0.0, 1.0]])
    >>> metric_table(t, {"initial": t + 1}, ["B4"]).sel(metric="rmse").item()
    1.0
    """
    stages = list(predictions)
    values = np.stack(
        [
            np.stack([fn(target, predictions[s]) for s in stages], axis=-1)
            for fn in METRICS.values()
        ],
        axis=1,
    )
    return xr.DataArray(
        values,
        dims=("band", "metric", "stage"),
        coords={"band": list(bands), "metric": list(METRICS), "stage": stages},
        name="metrics",
    )
