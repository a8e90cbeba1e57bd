"""Per-band regression metrics: RMSE, R², explained variance and maximum error.

NaNs are ignored pixel-wise so callers can pass masked images directly.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

__all__ = [
    "METRICS",
    "explained_variance",
    "high_frequency_energy",
    "high_frequency_transfer",
    "max_error",
    "metric_table",
    "r2",
    "rmse",
    "roc_auc",
]


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


def _one_minus(residual: float | np.floating, total: float | np.floating) -> float:
    # Undefined for a constant target (no variance to explain): NaN, not a division by 0.
    return float(1.0 - residual / total) if total > 0 else np.nan


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

    NaN for a constant target, which leaves nothing to explain.

    Examples
    --------
    >>> r2(np.array([[1.0, 2.0, 3.0]]), np.array([[1.0, 2.0, 3.0]]))
    array([1.])
    >>> r2(np.array([[2.0, 2.0]]), np.array([[1.0, 2.0]]))
    array([nan])
    """
    return _per_band(
        lambda t, p: _one_minus(np.sum((t - p) ** 2), np.sum((t - t.mean()) ** 2)), target, pred
    )


def explained_variance(target: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Explained variance 1 - Var(t - p) / Var(t) per band (blind to a constant bias).

    Examples
    --------
    >>> explained_variance(np.array([[1.0, 2.0, 3.0]]), np.array([[2.0, 3.0, 4.0]]))
    array([1.])
    """
    return _per_band(lambda t, p: _one_minus(np.var(t - p), np.var(t)), target, pred)


def max_error(target: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Largest absolute error per band.

    Examples
    --------
    >>> max_error(np.array([[0.0, 1.0]]), np.array([[0.5, -1.0]]))
    array([2.])
    """
    return _per_band(lambda t, p: np.max(np.abs(t - p)), target, pred)


#: The metrics of :func:`metric_table`, by name, in table order.
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


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` separating ``labels`` (True = positive).

    The Mann-Whitney form: the probability that a random positive scores above a random
    negative, ties counting one half. NaN scores are dropped.

    Examples
    --------
    >>> roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True]))
    0.75
    """
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in shape")
    ok = np.isfinite(s)
    s, y = s[ok], y[ok]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("roc_auc needs both positive and negative labels")
    ranks = rankdata(s)  # average ranks: ties count one half
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _high_spectrum(image: np.ndarray, cutoff: float) -> np.ndarray:
    """Windowed spectrum (band, n) of (band, y, x) at frequencies above ``cutoff``."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 3:
        raise ValueError(f"expected a (band, y, x) array, got shape {img.shape}")
    if not np.isfinite(img).all():
        raise ValueError("high-frequency measures need a finite image: crop away no-data")
    ny, nx = img.shape[1:]
    # The mean is removed and a Hann window applied so the borders do not leak power
    # into the high frequencies.
    window = np.outer(np.hanning(ny), np.hanning(nx))
    spectrum = np.fft.fft2((img - img.mean(axis=(1, 2), keepdims=True)) * window)
    fy, fx = np.fft.fftfreq(ny), np.fft.fftfreq(nx)
    return spectrum[:, np.hypot(fy[:, None], fx[None, :]) > cutoff]


def high_frequency_energy(image: np.ndarray, cutoff: float) -> np.ndarray:
    """Mean spectral power above ``cutoff`` cycles per pixel, per band of (band, y, x).

    It measures the detail a sharper sensor adds: with ``cutoff`` at the reference
    Nyquist frequency in source pixels (0.1 for 2 m against 10 m), it is the energy
    Sentinel-2 cannot see. The mean is removed and a Hann window applied first, so the
    image borders do not leak power into high frequencies. The image must be finite.
    Noise counts as energy too; :func:`high_frequency_transfer` does not.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> noise = rng.normal(size=(1, 64, 64))
    >>> ratio = high_frequency_energy(2 * noise, 0.1) / high_frequency_energy(noise, 0.1)
    >>> ratio.round(6)
    array([4.])
    """
    spectrum = _high_spectrum(image, cutoff)
    return (np.abs(spectrum) ** 2).sum(axis=1) / np.prod(np.shape(image)[1:])


def high_frequency_transfer(image: np.ndarray, reference: np.ndarray, cutoff: float) -> np.ndarray:
    """Share of ``reference``'s detail above ``cutoff`` that ``image`` carries, per band.

    The least-squares gain of the image's spectrum on the reference's at frequencies
    above ``cutoff`` cycles per pixel: 1 when the image holds the reference's detail at
    full strength, below 1 when it is blurred (or shifted), whatever noise either holds,
    since noise does not correlate with the reference.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> detail = rng.normal(size=(1, 64, 64))
    >>> noisy = detail + rng.normal(scale=0.5, size=detail.shape)
    >>> bool(abs(high_frequency_transfer(noisy, detail, 0.1)[0] - 1) < 0.05)
    True
    >>> bool(high_frequency_transfer(np.roll(detail, 1, axis=2), detail, 0.1)[0] < 0.5)
    True
    """
    if np.shape(image) != np.shape(reference):
        raise ValueError(f"image {np.shape(image)} and reference {np.shape(reference)} differ")
    img, ref = _high_spectrum(image, cutoff), _high_spectrum(reference, cutoff)
    return np.real((img * np.conj(ref)).sum(axis=1)) / (np.abs(ref) ** 2).sum(axis=1)
