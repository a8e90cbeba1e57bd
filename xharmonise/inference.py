"""Applying a fitted mapping pixel by pixel over chunks, lazily."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dask.array as da
import numpy as np

from xharmonise.models.linear import apply_linear

if TYPE_CHECKING:
    from xharmonise.harmoniser import Harmoniser

__all__ = ["map_pixels"]


def _apply_block(block: np.ndarray, coef: np.ndarray, n_out: int) -> np.ndarray:
    """(band, y, x) reflectance -> (2 * n_out, y, x): prediction then variance."""
    valid = np.isfinite(block).all(axis=0)
    pred = apply_linear(coef, block.astype(np.float32, copy=False), axis=0)
    out = np.full((2 * n_out, *block.shape[1:]), np.nan, np.float32)
    out[:n_out] = np.where(valid, pred, np.nan)
    return out


def map_pixels(data: np.ndarray | da.Array, model: Harmoniser) -> np.ndarray | da.Array:
    """Map (band, y, x) source reflectance to (2 * band, y, x): prediction, variance.

    A Dask input stays lazy, on its own chunks with the band axis in one chunk; the
    variance planes are NaN for models without a variance head.
    """
    n = model.n_bands
    coef = np.asarray(model.linear, dtype=np.float32)
    if isinstance(data, da.Array):
        data = data.rechunk({0: -1})
        return da.map_blocks(
            _apply_block,
            data,
            coef=coef,
            n_out=n,
            chunks=((2 * n,), *data.chunks[1:]),
            dtype=np.float32,
            meta=np.empty((0, 0, 0), np.float32),
        )
    return _apply_block(np.asarray(data), coef, n)
