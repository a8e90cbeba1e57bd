"""The ``.harmonise`` accessor on DataArray and Dataset: it forwards to :mod:`xharmonise.api`."""

from __future__ import annotations

from typing import Any

import xarray as xr

from xharmonise import api
from xharmonise.coregister import ShiftEstimate
from xharmonise.harmoniser import Harmoniser


class _HarmoniseAccessor:
    def __init__(self, obj: xr.DataArray | xr.Dataset) -> None:
        self._obj = obj

    def fit(self, ref: xr.DataArray | xr.Dataset, **kwargs: Any) -> Harmoniser:
        """Forward to :func:`xharmonise.fit` with this object as the source."""
        return api.fit(self._obj, ref, **kwargs)

    def estimate_shift(self, ref: xr.DataArray | xr.Dataset, **kwargs: Any) -> ShiftEstimate:
        """Forward to :func:`xharmonise.estimate_shift` with this object as the source."""
        return api.estimate_shift(self._obj, ref, **kwargs)

    def predict(self, model: Harmoniser, **kwargs: Any) -> xr.Dataset:
        """Forward to :func:`xharmonise.predict` with this object as the source."""
        return api.predict(self._obj, model, **kwargs)


xr.register_dataarray_accessor("harmonise")(_HarmoniseAccessor)
xr.register_dataset_accessor("harmonise")(_HarmoniseAccessor)
