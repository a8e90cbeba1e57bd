"""The linear baseline: one least-squares regression per output band on all input bands."""

from __future__ import annotations

import numpy as np

__all__ = ["apply_linear", "fit_linear"]


def fit_linear(src: np.ndarray, ref: np.ndarray, *, axis: int = 0) -> np.ndarray:
    """Fit ``ref[o] = sum_i A[o, i] * src[i] + b[o]`` by least squares, per output band.

    Parameters
    ----------
    src, ref : numpy.ndarray
        Paired source and reference values; pixels with a NaN in either are ignored.
    axis : int
        The band axis (0 for (band, y, x) images, 1 for (n, band, y, x) patches).

    Returns
    -------
    numpy.ndarray
        (out_bands, in_bands + 1) coefficients ``[A | b]``.

    Examples
    --------
    >>> x = np.random.default_rng(0).random((2, 100))
    >>> y = np.stack([2 * x[0] + 0.1, x[0] - x[1]])
    >>> (fit_linear(x, y).round(3) + 0.0).tolist()
    [[2.0, 0.0, 0.1], [1.0, -1.0, 0.0]]
    """
    x = _pixels(src, axis)
    y = _pixels(ref, axis)
    ok = np.isfinite(x).all(axis=1) & np.isfinite(y).all(axis=1)
    if ok.sum() <= x.shape[1]:
        raise ValueError(f"only {int(ok.sum())} valid pixels to fit {x.shape[1] + 1} terms")
    design = np.concatenate([x[ok], np.ones((int(ok.sum()), 1))], axis=1)
    coef, *_ = np.linalg.lstsq(design, y[ok], rcond=None)
    return coef.T.copy()


def apply_linear(coef: np.ndarray, src: np.ndarray, *, axis: int = 0) -> np.ndarray:
    """Apply ``[A | b]`` along the band ``axis`` of ``src``; keeps its float dtype.

    Examples
    --------
    >>> coef = np.array([[2.0, 0.0, 0.1], [1.0, -1.0, 0.0]])  # from fit_linear
    >>> apply_linear(coef, np.array([[1.0], [0.5]], np.float32))
    array([[2.1],
           [0.5]], dtype=float32)
    """
    moved = np.moveaxis(src, axis, -1)
    out = moved @ coef[:, :-1].T.astype(moved.dtype) + coef[:, -1].astype(moved.dtype)
    return np.moveaxis(out, -1, axis)


def _pixels(a: np.ndarray, axis: int) -> np.ndarray:
    a = np.moveaxis(np.asarray(a, dtype=np.float64), axis, -1)
    return a.reshape(-1, a.shape[-1])
