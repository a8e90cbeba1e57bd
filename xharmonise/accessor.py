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
        """Forward to :func:`xharmonise.fit` with this object as the source.

        Examples
        --------
        >>> import xharmonise
        >>> from xharmonise.simulate import simulate_pair
        >>> pair = simulate_pair((200, 200), seed=0)
        >>> pair.src.harmonise.fit(pair.ref, method="linear", patch_size=8).method
        'linear'
        """
        return api.fit(self._obj, ref, **kwargs)

    def estimate_shift(self, ref: xr.DataArray | xr.Dataset, **kwargs: Any) -> ShiftEstimate:
        """Forward to :func:`xharmonise.estimate_shift` with this object as the source.

        Examples
        --------
        >>> import xharmonise
        >>> from xharmonise.simulate import simulate_pair
        >>> pair = simulate_pair((600, 600), seed=0, shift=(4.0, -2.0))
        >>> est = pair.src.harmonise.estimate_shift(pair.ref)
        >>> round(est.east), round(est.north)
        (4, -2)
        """
        return api.estimate_shift(self._obj, ref, **kwargs)

    def predict(self, model: Harmoniser, **kwargs: Any) -> xr.Dataset:
        """Forward to :func:`xharmonise.predict` with this object as the source.

        Examples
        --------
        >>> import xharmonise
        >>> from xharmonise.simulate import simulate_pair
        >>> pair = simulate_pair((200, 200), seed=0)
        >>> model = pair.src.harmonise.fit(pair.ref, method="linear", patch_size=8)
        >>> pair.src.harmonise.predict(model)["prediction"].shape
        (4, 200, 200)
        """
        return api.predict(self._obj, model, **kwargs)


xr.register_dataarray_accessor("harmonise")(_HarmoniseAccessor)
xr.register_dataset_accessor("harmonise")(_HarmoniseAccessor)
