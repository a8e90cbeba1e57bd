"""The ``.harmonise`` accessor on DataArray and Dataset: it forwards to :mod:`xharmonise.api`.

Each method spells out the parameters of its free function (names, defaults and
annotations; ``tests/test_accessor.py`` keeps them in step), so that ``help()``, IDEs and
type checkers see them, and forwards every one by name. The free functions check the
arguments and carry the documentation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import xarray as xr

from xharmonise import api
from xharmonise.dates import DEFAULT_MAX_DAYS
from xharmonise.evaluation import Split
from xharmonise.harmoniser import Harmoniser
from xharmonise.models.registry import MethodName
from xharmonise.records import ShiftEstimate


class _HarmoniseAccessor:
    def __init__(self, obj: xr.DataArray | xr.Dataset) -> None:
        self._obj = obj

    def fit(
        self,
        ref: xr.DataArray | xr.Dataset,
        *,
        method: MethodName = "calibnet",
        variance: bool = False,
        mask: xr.DataArray | None = None,
        bands: Mapping[str, str] | Sequence[str] | None = None,
        scale: float | tuple[float | None, float | None] | None = None,
        offset: float | tuple[float | None, float | None] | None = None,
        iterations: int | None = None,
        batch_size: int | None = None,
        patch_size: int = 32,
        test_fraction: float = 0.1,
        max_patches: int | None = None,
        seed: int = 0,
        device: str = "auto",
        progress: bool = True,
        coregister: bool | ShiftEstimate = False,
        src_time: Any = None,
        dates: str | Sequence[Any] = "auto",
        max_days: float = DEFAULT_MAX_DAYS,
    ) -> Harmoniser:
        """:func:`xharmonise.fit` with this object as the source ``src``.

        The parameters are :func:`xharmonise.fit`'s; see it for their meaning.

        Examples
        --------
        >>> import xharmonise
        >>> from xharmonise.simulate import simulate_pair
        >>> pair = simulate_pair((200, 200), seed=0)
        >>> pair.src.harmonise.fit(pair.ref, method="linear", patch_size=8).method
        'linear'
        """
        return api.fit(
            self._obj,
            ref,
            method=method,
            variance=variance,
            mask=mask,
            bands=bands,
            scale=scale,
            offset=offset,
            iterations=iterations,
            batch_size=batch_size,
            patch_size=patch_size,
            test_fraction=test_fraction,
            max_patches=max_patches,
            seed=seed,
            device=device,
            progress=progress,
            coregister=coregister,
            src_time=src_time,
            dates=dates,
            max_days=max_days,
        )

    def estimate_shift(
        self,
        ref: xr.DataArray | xr.Dataset,
        *,
        mask: xr.DataArray | None = None,
        bands: Mapping[str, str] | Sequence[str] | None = None,
        scale: float | tuple[float | None, float | None] | None = None,
        offset: float | tuple[float | None, float | None] | None = None,
        window: int | None = None,
        max_windows: int = 64,
        max_shift: float = 4.0,
        min_windows: int = 3,
        seed: int = 0,
    ) -> ShiftEstimate:
        """:func:`xharmonise.estimate_shift` with this object as the source ``src``.

        The parameters are :func:`xharmonise.estimate_shift`'s; see it for their meaning.

        Examples
        --------
        >>> import xharmonise
        >>> from xharmonise.simulate import simulate_pair
        >>> pair = simulate_pair((600, 600), seed=0, shift=(4.0, -2.0))
        >>> est = pair.src.harmonise.estimate_shift(pair.ref)
        >>> round(est.east), round(est.north)
        (4, -2)
        """
        return api.estimate_shift(
            self._obj,
            ref,
            mask=mask,
            bands=bands,
            scale=scale,
            offset=offset,
            window=window,
            max_windows=max_windows,
            max_shift=max_shift,
            min_windows=min_windows,
            seed=seed,
        )

    def predict(
        self,
        model: Harmoniser,
        *,
        with_variance: bool | None = None,
        with_applicability: bool = False,
        scale: float | None = None,
        offset: float | None = None,
    ) -> xr.Dataset:
        """:func:`xharmonise.predict` with this object as the source ``src``.

        The parameters are :func:`xharmonise.predict`'s; see it for their meaning.

        Examples
        --------
        >>> import xharmonise
        >>> from xharmonise.simulate import simulate_pair
        >>> pair = simulate_pair((200, 200), seed=0)
        >>> model = pair.src.harmonise.fit(pair.ref, method="linear", patch_size=8)
        >>> pair.src.harmonise.predict(model)["prediction"].shape
        (4, 200, 200)
        """
        return api.predict(
            self._obj,
            model,
            with_variance=with_variance,
            with_applicability=with_applicability,
            scale=scale,
            offset=offset,
        )

    def evaluate(
        self,
        ref: xr.DataArray | xr.Dataset,
        model: Harmoniser,
        *,
        mask: xr.DataArray | None = None,
        bands: Mapping[str, str] | Sequence[str] | None = None,
        scale: float | tuple[float | None, float | None] | None = None,
        offset: float | tuple[float | None, float | None] | None = None,
        split: Split = "all",
        patch_size: int | None = None,
        test_fraction: float | None = None,
        max_patches: int | None = None,
        seed: int | None = None,
        coregister: bool | ShiftEstimate | None = None,
        src_time: Any = None,
        dates: str | Sequence[Any] = "auto",
        max_days: float = DEFAULT_MAX_DAYS,
    ) -> xr.Dataset:
        """:func:`xharmonise.evaluate` with this object as the source ``src``.

        The parameters are :func:`xharmonise.evaluate`'s; see it for their meaning.

        Examples
        --------
        >>> import xharmonise
        >>> from xharmonise.simulate import simulate_pair
        >>> pair = simulate_pair((200, 200), seed=0)
        >>> model = pair.src.harmonise.fit(pair.ref, method="linear", patch_size=8)
        >>> scores = pair.src.harmonise.evaluate(pair.ref, model, split="test")
        >>> scores["metrics"].dims
        ('band', 'metric', 'stage')
        """
        return api.evaluate(
            self._obj,
            ref,
            model=model,
            mask=mask,
            bands=bands,
            scale=scale,
            offset=offset,
            split=split,
            patch_size=patch_size,
            test_fraction=test_fraction,
            max_patches=max_patches,
            seed=seed,
            coregister=coregister,
            src_time=src_time,
            dates=dates,
            max_days=max_days,
        )


xr.register_dataarray_accessor("harmonise")(_HarmoniseAccessor)
xr.register_dataset_accessor("harmonise")(_HarmoniseAccessor)
