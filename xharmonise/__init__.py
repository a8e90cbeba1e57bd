"""xharmonise: harmonise high-resolution reflectances with Sentinel-2, lazily and at scale."""

from importlib.metadata import version as _version

from xharmonise import accessor as _accessor  # noqa: F401  (registers .harmonise)
from xharmonise.api import estimate_shift, evaluate, fit, predict
from xharmonise.calibration import Calibration
from xharmonise.errors import (
    BandMismatchError,
    CalibrationWarning,
    CoregistrationError,
    DateError,
    DetailLossWarning,
    DimensionError,
    GridError,
    HarmoniseError,
    InputTypeError,
    InputValueError,
    MissingCRSError,
    ModelFileError,
    NoOverlapError,
    NoValidPatchesError,
    OutOfDomainWarning,
    StoreExistsError,
    UnknownBandWarning,
    UnknownMethodError,
)
from xharmonise.harmoniser import FitReport, Harmoniser, Mapping, load, save
from xharmonise.masks import cloud_mask_from_clm, cloud_mask_from_scl
from xharmonise.records import ShiftEstimate
from xharmonise.store import to_zarr

# The installed distribution's version: pyproject.toml is its one source.
__version__ = _version("xharmonise")

__all__ = [
    "BandMismatchError",
    "Calibration",
    "CalibrationWarning",
    "CoregistrationError",
    "DateError",
    "DetailLossWarning",
    "DimensionError",
    "FitReport",
    "GridError",
    "HarmoniseError",
    "Harmoniser",
    "InputTypeError",
    "InputValueError",
    "Mapping",
    "MissingCRSError",
    "ModelFileError",
    "NoOverlapError",
    "NoValidPatchesError",
    "OutOfDomainWarning",
    "ShiftEstimate",
    "StoreExistsError",
    "UnknownBandWarning",
    "UnknownMethodError",
    "cloud_mask_from_clm",
    "cloud_mask_from_scl",
    "estimate_shift",
    "evaluate",
    "fit",
    "load",
    "predict",
    "save",
    "to_zarr",
]
