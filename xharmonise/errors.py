"""Exceptions raised by xharmonise.

Every error a user can cause derives from :class:`HarmoniseError` and its message names
both the problem and the fix, so callers can catch one type and users know what to do.
"""

from __future__ import annotations

__all__ = [
    "BandMismatchError",
    "CoregistrationError",
    "DetailLossWarning",
    "GridError",
    "HarmoniseError",
    "InputValueError",
    "MissingCRSError",
    "ModelFileError",
    "NoOverlapError",
    "NoValidPatchesError",
    "StoreExistsError",
    "UnknownMethodError",
]


class HarmoniseError(Exception):
    """Base class of every error xharmonise raises on bad input or bad state."""


class MissingCRSError(HarmoniseError):
    """An input has no coordinate reference system."""


class GridError(HarmoniseError):
    """An input grid cannot be used (irregular, descending, coarser than the reference...)."""


class NoOverlapError(HarmoniseError):
    """The source and the reference do not overlap enough."""


class NoValidPatchesError(HarmoniseError):
    """Every candidate patch holds no-data or cloud."""

    def __init__(self, message: str, *, total: int = 0, nodata: int = 0, cloudy: int = 0):
        super().__init__(message)
        self.total = total
        self.nodata = nodata
        self.cloudy = cloudy


class CoregistrationError(HarmoniseError):
    """The shift between source and reference cannot be measured reliably."""


class BandMismatchError(HarmoniseError):
    """Source and reference bands cannot be paired, or differ from the model's."""


class InputValueError(HarmoniseError):
    """Input values are not reflectances as expected (scale, NaN, range)."""


class UnknownMethodError(HarmoniseError):
    """The requested method does not exist."""


class ModelFileError(HarmoniseError):
    """A model file is missing, corrupted, truncated or unsafe."""


class StoreExistsError(HarmoniseError):
    """The output store exists and overwriting was not asked for."""


class DetailLossWarning(UserWarning):
    """The model alters full-resolution spatial detail (ConvCalibNet applied at 2 m)."""
