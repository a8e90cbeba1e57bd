"""Option checks: every keyword argument's type and limits, in one place.

The public functions call these first, before any data is read, so that a bad option is
refused with a message naming it and its limits instead of failing deep inside NumPy,
Dask or torch. Wrong types raise :class:`~xharmonise.InputTypeError` (a
:class:`TypeError`), values beyond the limits :class:`~xharmonise.InputValueError` (a
:class:`ValueError`).
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from xharmonise.errors import InputTypeError, InputValueError

__all__ = [
    "choice",
    "device",
    "flag",
    "integer",
    "mapping_or_names",
    "per_input",
    "real",
    "sampling",
    "type_name",
]

# Seeds go to NumPy (non-negative) and torch (below 2**64).
SEED_RANGE = (0, 2**64 - 1)


def type_name(obj: Any) -> str:
    """``numpy.ndarray``, ``str``, ``xarray.Dataset``: how to name a type in messages.

    Examples
    --------
    >>> import numpy as np
    >>> type_name(np.zeros(2)), type_name("a")
    ('numpy.ndarray', 'str')
    """
    cls = type(obj)
    module = cls.__module__.split(".")[0]
    return cls.__name__ if module == "builtins" else f"{module}.{cls.__name__}"


def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def integer(
    value: Any,
    name: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    optional: bool = False,
) -> int | None:
    """``value`` as an int within [minimum, maximum], or an error naming ``name``.

    Examples
    --------
    >>> integer(3, "patch_size", minimum=1)
    3
    >>> integer(0, "patch_size", minimum=1)
    Traceback (most recent call last):
        ...
    xharmonise.errors.InputValueError: patch_size=0 is not allowed: give an integer of at least 1
    """
    if value is None and optional:
        return None
    limits = _limits(minimum, maximum)
    if not _is_integer(value):
        none = " (or None)" if optional else ""
        raise InputTypeError(
            f"{name}={value!r} is a {type_name(value)}: give an integer{limits}{none}"
        )
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise InputValueError(f"{name}={value!r} is not allowed: give an integer{limits}")
    return int(value)


def _limits(minimum: float | None, maximum: float | None, *, below: bool = False) -> str:
    if minimum is not None and maximum is not None:
        return f" from {minimum:g} to {maximum:g}{' (excluded)' if below else ''}"
    if minimum is not None:
        return f" of at least {minimum:g}"
    if maximum is not None:
        return f" of at most {maximum:g}"
    return ""


def real(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    below_maximum: bool = False,
    above_minimum: bool = False,
    optional: bool = False,
) -> float | None:
    """``value`` as a finite float within its limits, or an error naming ``name``.

    ``above_minimum`` / ``below_maximum`` exclude the limit itself.

    Examples
    --------
    >>> real(0.1, "test_fraction", minimum=0, maximum=1, below_maximum=True)
    0.1
    >>> real(float("nan"), "max_shift", minimum=0, above_minimum=True)
    Traceback (most recent call last):
        ...
    xharmonise.errors.InputValueError: max_shift=nan is not allowed: give a finite number above 0
    """
    if value is None and optional:
        return None
    if minimum is not None and maximum is not None:
        limits = f" from {minimum:g} to {maximum:g}"
        limits += " (excluded)" if below_maximum else ""
    elif minimum is not None:
        limits = f" above {minimum:g}" if above_minimum else f" of at least {minimum:g}"
    else:
        limits = _limits(minimum, maximum)
    if not _is_real(value):
        none = " (or None)" if optional else ""
        raise InputTypeError(
            f"{name}={value!r} is a {type_name(value)}: give a number{limits}{none}"
        )
    v = float(value)
    bad = not math.isfinite(v)
    if minimum is not None:
        bad |= v < minimum or (above_minimum and v == minimum)
    if maximum is not None:
        bad |= v > maximum or (below_maximum and v == maximum)
    if bad:
        raise InputValueError(f"{name}={value!r} is not allowed: give a finite number{limits}")
    return v


#: The options that choose a fit's patches and its split, in the order ``fit`` takes them.
SAMPLING_OPTIONS = ("patch_size", "test_fraction", "max_patches", "seed")


def sampling(*, patch_size: Any, test_fraction: Any, max_patches: Any, seed: Any) -> dict[str, Any]:
    """The options that choose the patches and the split as plain Python values, or an
    error naming the first bad one.

    One check for ``fit``'s and ``evaluate``'s options and for the record of them a
    fitted model keeps (``FitReport.sampling``), so that all three accept the same values.

    Examples
    --------
    >>> sampling(patch_size=16, test_fraction=0.2, max_patches=None, seed=3)
    {'patch_size': 16, 'test_fraction': 0.2, 'max_patches': None, 'seed': 3}
    >>> sampling(patch_size=16, test_fraction=1, max_patches=None, seed=3)
    Traceback (most recent call last):
        ...
    xharmonise.errors.InputValueError: test_fraction=1 is not allowed: give a finite ...
    """
    return {
        "patch_size": integer(patch_size, "patch_size", minimum=1),
        "test_fraction": real(
            test_fraction, "test_fraction", minimum=0, maximum=1, below_maximum=True
        ),
        "max_patches": integer(max_patches, "max_patches", minimum=1, optional=True),
        "seed": integer(seed, "seed", minimum=SEED_RANGE[0], maximum=SEED_RANGE[1]),
    }


def flag(value: Any, name: str) -> bool:
    """``value`` as a bool: True or False only (not 1, "yes" or None).

    Examples
    --------
    >>> flag(True, "variance")
    True
    """
    if not isinstance(value, bool | np.bool_):
        raise InputTypeError(f"{name}={value!r} is a {type_name(value)}: give True or False")
    return bool(value)


def per_input(
    value: Any, name: str, *, positive: bool, example: str
) -> tuple[float | None, float | None]:
    """``scale=`` / ``offset=``: one number for both inputs, or (source, reference).

    Examples
    --------
    >>> per_input((1e-4, None), "scale", positive=True, example="1e-4")
    (0.0001, None)
    >>> per_input(0.0, "scale", positive=True, example="1e-4")
    Traceback (most recent call last):
        ...
    xharmonise.errors.InputValueError: scale=0.0 is not allowed: give a finite number above 0...
    """
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != 2:
            raise InputValueError(
                f"{name}={value!r} has {len(value)} values: give one number for both inputs "
                f"or (source, reference), e.g. {name}=({example}, None)"
            )
        first, second = (_one(v, name, positive, example) for v in value)
        return first, second
    one = _one(value, name, positive, example)
    return one, one


def _one(value: Any, name: str, positive: bool, example: str) -> float | None:
    if value is None:
        return None
    if not _is_real(value):
        raise InputTypeError(
            f"{name}={value!r} is a {type_name(value)}: give a number (e.g. {name}={example}) "
            "or (source, reference)"
        )
    v = float(value)
    if not math.isfinite(v) or (positive and v <= 0):
        limits = " above 0" if positive else ""
        raise InputValueError(
            f"{name}={value!r} is not allowed: give a finite number{limits} (e.g. "
            f"{name}={example}) or None"
        )
    return v


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def device(value: Any) -> str:
    """A usable training device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or
    ``"mps"`` (CUDA and MPS only when present).

    Examples
    --------
    >>> device("cpu")
    'cpu'
    >>> device("tpu")
    Traceback (most recent call last):
        ...
    xharmonise.errors.InputValueError: device='tpu' is not a device: give "auto" ...
    """
    if not isinstance(value, str):
        raise InputTypeError(
            f'device={value!r} is a {type_name(value)}: give "auto", "cpu" or "cuda"'
        )
    if not _DEVICE.match(value):
        raise InputValueError(
            f'device={value!r} is not a device: give "auto" (CUDA when present), "cpu", '
            '"cuda", "cuda:N" or "mps"'
        )
    if value.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise InputValueError(
                f'device={value!r} but CUDA is not available on this machine: use "cpu", or '
                '"auto" to take CUDA only where present'
            )
        index = int(value.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise InputValueError(
                f"device={value!r} but this machine has {torch.cuda.device_count()} CUDA "
                'device(s): give "cuda:0" up to the last one, or "auto"'
            )
    if value == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise InputValueError(
                'device="mps" but MPS is not available on this machine: use "cpu" or "auto"'
            )
    return value


def choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """``value`` when it is one of ``choices``: another string is an
    :class:`~xharmonise.InputValueError`, anything else an :class:`~xharmonise.InputTypeError`.

    Examples
    --------
    >>> choice("w", "mode", ("w-", "w"))
    'w'
    >>> choice("a", "mode", ("w-", "w"))
    Traceback (most recent call last):
        ...
    xharmonise.errors.InputValueError: mode='a' is not allowed: choose one of 'w-', 'w'
    """
    options = ", ".join(repr(c) for c in choices)
    if not isinstance(value, str):
        raise InputTypeError(f"{name}={value!r} is a {type_name(value)}: choose one of {options}")
    if value not in choices:
        raise InputValueError(f"{name}={value!r} is not allowed: choose one of {options}")
    return value


def mapping_or_names(value: Any, name: str) -> Mapping[str, str] | Sequence[str] | None:
    """``bands=``: None, a non-empty ``{src: ref}`` mapping or a list of names.

    Examples
    --------
    >>> mapping_or_names(["B2", "B3"], "bands")
    ['B2', 'B3']
    """
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Mapping | Sequence):
        raise InputTypeError(
            f"{name}={value!r} is a {type_name(value)}: give a {{src_band: ref_band}} mapping "
            "or a list of reference band names in source order"
        )
    if len(value) == 0:
        raise InputValueError(
            f"{name}={value!r} is empty: give at least one band pair, or {name}=None to pair "
            "every band in order"
        )
    return value
