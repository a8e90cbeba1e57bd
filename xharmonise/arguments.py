"""The public functions' arguments, checked before any work: one function per entry point.

``fit``, ``predict`` and ``estimate_shift`` call these first, so that a bad option or a
mask of the wrong kind is refused with a message naming it and its fix before any pixel is
read, sampled or trained on. The single-value checks they are made of live in
:mod:`xharmonise.checks`.
"""

from __future__ import annotations

from typing import Any

import xarray as xr

from xharmonise import checks, dates
from xharmonise.errors import DimensionError, InputTypeError, InputValueError
from xharmonise.evaluation import SPLITS, sampling_options
from xharmonise.harmoniser import Harmoniser
from xharmonise.models.registry import METHODS
from xharmonise.models.registry import method as method_spec
from xharmonise.records import ShiftEstimate

__all__ = [
    "date_options",
    "evaluate_options",
    "fit_options",
    "harmoniser",
    "mask",
    "predict_options",
    "shift_options",
]


def fit_options(
    *,
    method: Any,
    variance: Any,
    iterations: Any,
    batch_size: Any,
    patch_size: Any,
    test_fraction: Any,
    max_patches: Any,
    seed: Any,
    device: Any,
    progress: Any,
    coregister: Any,
) -> None:
    """Refuse any of ``fit``'s options that is of the wrong type or beyond its limits.

    Examples
    --------
    >>> fit_options(method="calibnet", variance=False, iterations=None, batch_size=None,
    ...             patch_size=0, test_fraction=0.1, max_patches=None, seed=0,
    ...             device="cpu", progress=True, coregister=False)
    Traceback (most recent call last):
        ...
    xharmonise.errors.InputValueError: patch_size=0 is not allowed: give an integer of at least 1
    """
    spec = method_spec(method)
    checks.flag(variance, "variance")
    if variance and not spec.offers_variance:
        offering = ", ".join(m.name for m in METHODS.values() if m.offers_variance)
        raise InputValueError(
            f"method={method!r} has no variance head: drop variance=True, or choose a method "
            f"that offers one ({offering})"
        )
    checks.integer(iterations, "iterations", minimum=1, optional=True)
    checks.integer(batch_size, "batch_size", minimum=1, optional=True)
    checks.sampling(
        patch_size=patch_size, test_fraction=test_fraction, max_patches=max_patches, seed=seed
    )
    if spec.neural and batch_size is not None and batch_size * patch_size**2 < 2:
        raise InputValueError(
            f"batch_size={batch_size} with patch_size={patch_size} makes training steps of "
            "one pixel, which batch normalisation cannot use: raise batch_size or patch_size"
        )
    checks.device(device)
    checks.flag(progress, "progress")
    if not isinstance(coregister, ShiftEstimate):
        checks.flag(coregister, "coregister")


def predict_options(
    model: Any, *, with_variance: Any, scale: Any, offset: Any, with_applicability: Any = False
) -> None:
    """Refuse a ``model`` that is no :class:`~xharmonise.Harmoniser`, or a bad option of
    ``predict``."""
    harmoniser(model)
    if with_variance is not None:
        checks.flag(with_variance, "with_variance")
    if with_variance is True and model.variance_kind is None:
        raise InputValueError(
            "with_variance=True, but this model has no σ²: it has no variance head and was "
            "saved before xharmonise calibrated σ² for every model; fit it again for an "
            "empirical σ², or leave with_variance at its default"
        )
    checks.flag(with_applicability, "with_applicability")
    if with_applicability and model.domain is None:
        raise InputValueError(
            "with_applicability=True, but this model has no training domain: it was saved "
            "before xharmonise measured applicability; fit it again to get one, or leave "
            "with_applicability=False"
        )
    checks.real(scale, "scale", minimum=0, above_minimum=True, optional=True)
    checks.real(offset, "offset", optional=True)


def harmoniser(value: Any) -> Harmoniser:
    """``model=`` as a :class:`~xharmonise.Harmoniser`, or an error naming the fix.

    Examples
    --------
    >>> harmoniser("model.safetensors")
    Traceback (most recent call last):
        ...
    xharmonise.errors.InputTypeError: model is a str: pass a Harmoniser from xharmonise.fit, ...
    """
    if not isinstance(value, Harmoniser):
        raise InputTypeError(
            f"model is a {checks.type_name(value)}: pass a Harmoniser from xharmonise.fit, or "
            "read a saved one with xharmonise.load(path)"
        )
    return value


def evaluate_options(
    model: Any,
    *,
    split: Any,
    patch_size: Any,
    test_fraction: Any,
    max_patches: Any,
    seed: Any,
    coregister: Any,
) -> dict[str, Any]:
    """Refuse a ``model`` that is no :class:`~xharmonise.Harmoniser`, or a bad option of
    ``evaluate``; return the sampling options it runs with.

    A sampling option left None is the model's own (:attr:`Harmoniser.sampling`), or
    ``fit``'s default for a model that does not record them
    (:func:`xharmonise.evaluation.sampling_options`).

    Returns
    -------
    dict
        ``patch_size``, ``test_fraction``, ``max_patches`` and ``seed``, checked.

    Examples
    --------
    >>> evaluate_options(None, split="train", patch_size=32, test_fraction=0.1,
    ...                  max_patches=None, seed=0, coregister=None)
    Traceback (most recent call last):
        ...
    xharmonise.errors.InputTypeError: model is a NoneType: pass a Harmoniser from ...
    """
    harmoniser(model)
    if not isinstance(split, str) or split not in SPLITS:
        raise InputValueError(
            f"split={split!r} is not a choice: give 'all' (every valid patch of the pair) or "
            "'test' (the test split fit held out, with the model's patch_size, test_fraction, "
            "max_patches and seed)"
        )
    given = {
        "patch_size": patch_size,
        "test_fraction": test_fraction,
        "max_patches": max_patches,
        "seed": seed,
    }
    options = checks.sampling(**sampling_options(model, given))
    if coregister is not None and not isinstance(coregister, ShiftEstimate):
        checks.flag(coregister, "coregister")
    return options


def shift_options(
    *, window: Any, max_windows: Any, max_shift: Any, min_windows: Any, seed: Any
) -> None:
    """Refuse a bad option of ``estimate_shift``."""
    checks.integer(window, "window", minimum=2, optional=True)
    checks.integer(max_windows, "max_windows", minimum=1)
    checks.real(max_shift, "max_shift", minimum=0, above_minimum=True)
    checks.integer(min_windows, "min_windows", minimum=1)
    checks.integer(seed, "seed", minimum=checks.SEED_RANGE[0], maximum=checks.SEED_RANGE[1])


def date_options(*, dates_policy: Any, max_days: Any, src_time: Any) -> None:
    """Refuse a date policy, window or source date that cannot be used.

    Examples
    --------
    >>> date_options(dates_policy="latest", max_days=30, src_time=None)
    Traceback (most recent call last):
        ...
    xharmonise.errors.InputValueError: dates='latest' is not a date policy: give one of ...
    """
    if isinstance(dates_policy, str):
        if dates_policy not in dates.POLICIES:
            raise InputValueError(
                f"dates={dates_policy!r} is not a date policy: give one of "
                f"{', '.join(repr(p) for p in dates.POLICIES)}, or a list of reference dates"
            )
    elif isinstance(dates_policy, list | tuple) or (
        hasattr(dates_policy, "__len__") and hasattr(dates_policy, "__iter__")
    ):
        if len(dates_policy) == 0:
            raise InputValueError(
                "dates=[] lists no date: give reference dates, or a policy such as 'auto'"
            )
        for value in dates_policy:
            dates.as_date(value, "dates")
    else:
        raise InputTypeError(
            f"dates={dates_policy!r} is a {checks.type_name(dates_policy)}: give a policy "
            f"({', '.join(repr(p) for p in dates.POLICIES)}) or a list of reference dates"
        )
    checks.real(max_days, "max_days", minimum=0)
    if src_time is not None:
        dates.as_date(src_time, "src_time")


def mask(value: Any) -> xr.DataArray | None:
    """``mask=`` as a (y, x) DataArray of booleans or numbers, or an error naming the fix.

    Only the mask's type, dtype and dims are looked at: no value is read.
    """
    if value is None:
        return None
    if not isinstance(value, xr.DataArray):
        raise InputTypeError(
            f"the mask is a {checks.type_name(value)}: pass an xarray.DataArray (y, x) on the "
            "reference grid, True or 1 = cloud (e.g. from xharmonise.cloud_mask_from_scl)"
        )
    if value.dtype.kind not in "iufb":
        raise InputTypeError(
            f"the mask holds {value.dtype} values: give booleans or numbers, True or 1 = cloud"
        )
    if "band" in value.dims and value.sizes["band"] > 1:
        value = value.any("band")
    single = [d for d in value.dims if d not in ("y", "x") and value.sizes[d] == 1]
    value = value.isel({d: 0 for d in single}, drop=True)
    if set(value.dims) == {"time", "y", "x"}:
        # One mask per date of a reference time series (dates checked against it).
        return value.transpose("time", "y", "x")
    if value.dims != ("y", "x"):
        fix = (
            "transpose it with mask.transpose('y', 'x')"
            if set(value.dims) == {"y", "x"}
            else "give a (y, x) mask on the reference grid, or (time, y, x) for a "
            "reference time series"
        )
        raise DimensionError(f"the mask has dims {value.dims}: {fix}")
    return value
