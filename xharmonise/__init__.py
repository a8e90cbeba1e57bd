"""xharmonise: harmonise high-resolution reflectances with Sentinel-2, lazily and at scale."""

from xharmonise import accessor as _accessor  # noqa: F401  (registers .harmonise)
from xharmonise.api import fit, predict
from xharmonise.errors import (
    BandMismatchError,
    DetailLossWarning,
    GridError,
    HarmoniseError,
    InputValueError,
    MissingCRSError,
    ModelFileError,
    NoOverlapError,
    NoValidPatchesError,
    StoreExistsError,
    UnknownMethodError,
)
from xharmonise.harmoniser import Harmoniser, load
from xharmonise.store import to_zarr

__all__ = [
    "BandMismatchError",
    "DetailLossWarning",
    "GridError",
    "HarmoniseError",
    "Harmoniser",
    "InputValueError",
    "MissingCRSError",
    "ModelFileError",
    "NoOverlapError",
    "NoValidPatchesError",
    "StoreExistsError",
    "UnknownMethodError",
    "fit",
    "load",
    "predict",
    "to_zarr",
]
