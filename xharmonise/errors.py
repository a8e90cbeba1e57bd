"""Exceptions raised by xharmonise.

Every error a user can cause derives from :class:`HarmoniseError` and its message names
both the problem and the fix, so callers can catch one type and users know what to do.
"""

from __future__ import annotations

__all__ = [
    "BandMismatchError",
    "CalibrationWarning",
    "CoregistrationError",
    "DateError",
    "DetailLossWarning",
    "DimensionError",
    "GridError",
    "HarmoniseError",
    "InputTypeError",
    "InputValueError",
    "MissingCRSError",
    "ModelFileError",
    "NoOverlapError",
    "NoValidPatchesError",
    "OutOfDomainWarning",
    "StoreExistsError",
    "UnknownBandWarning",
    "UnknownMethodError",
]


class HarmoniseError(Exception):
    """Base class of every error xharmonise raises on bad input or bad state.

    Catch it to handle any refused input in one place; the message says what to change.

    Examples
    --------
    >>> import xharmonise
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((100, 100))
    >>> try:
    ...     xharmonise.fit(pair.src, pair.ref, method="nope")
    ... except xharmonise.HarmoniseError as err:
    ...     print(type(err).__name__)
    UnknownMethodError
    """


class MissingCRSError(HarmoniseError):
    """An input has no coordinate reference system.

    Examples
    --------
    >>> import xharmonise
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((100, 100))
    >>> xharmonise.fit(pair.src.drop_vars("spatial_ref"), pair.ref, method="linear")
    Traceback (most recent call last):
        ...
    xharmonise.errors.MissingCRSError: the source has no CRS: set one with da.rio.write_crs(...
    """


class GridError(HarmoniseError):
    """An input grid cannot be used (irregular, descending, coarser than the reference...).

    Examples
    --------
    >>> import xharmonise
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((100, 100))
    >>> xharmonise.fit(pair.src, pair.ref, mask=pair.mask[:10, :10], method="linear")
    Traceback (most recent call last):
        ...
    xharmonise.errors.GridError: the mask is not on the reference grid: ...
    """


class NoOverlapError(HarmoniseError):
    """The source and the reference do not overlap enough.

    Examples
    --------
    >>> import xharmonise
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((100, 100))
    >>> far = pair.ref.assign_coords(x=pair.ref.x + 100_000)  # 100 km east
    >>> xharmonise.fit(pair.src, far, method="linear")
    Traceback (most recent call last):
        ...
    xharmonise.errors.NoOverlapError: the source and the reference do not overlap: ...
    """


class NoValidPatchesError(HarmoniseError):
    """Every candidate patch holds no-data or cloud.

    The patch counts are kept on the exception as ``total``, ``nodata`` and ``cloudy``.

    Examples
    --------
    >>> import xharmonise
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((100, 100))
    >>> try:
    ...     xharmonise.fit(pair.src, pair.ref, mask=pair.mask | True, method="linear",
    ...                    patch_size=8)
    ... except xharmonise.NoValidPatchesError as err:
    ...     print(err.total == err.cloudy)
    True
    """

    def __init__(self, message: str, *, total: int = 0, nodata: int = 0, cloudy: int = 0):
        super().__init__(message)
        self.total = total
        self.nodata = nodata
        self.cloudy = cloudy


class CoregistrationError(HarmoniseError):
    """The shift between source and reference cannot be measured reliably.

    Examples
    --------
    >>> import xharmonise
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((100, 100))  # 20 x 20 reference pixels: too small
    >>> xharmonise.estimate_shift(pair.src, pair.ref)
    Traceback (most recent call last):
        ...
    xharmonise.errors.CoregistrationError: the overlap (20 x 20 reference pixels) cannot hold ...
    """


class BandMismatchError(HarmoniseError):
    """Source and reference bands cannot be paired, or differ from the model's.

    Examples
    --------
    >>> import xharmonise
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((100, 100))
    >>> xharmonise.fit(pair.src, pair.ref.sel(band=["B4", "B8"]), method="linear")
    Traceback (most recent call last):
        ...
    xharmonise.errors.BandMismatchError: the source has 4 bands ['B0', 'B1', 'B2', 'B3'] ...

    Saying which bands pair up fixes it:

    >>> model = xharmonise.fit(pair.src, pair.ref.sel(band=["B4", "B8"]), method="linear",
    ...                        bands={"B2": "B4", "B3": "B8"}, patch_size=8)
    >>> model.src_bands, model.ref_bands
    (('B2', 'B3'), ('B4', 'B8'))
    """


class InputValueError(HarmoniseError, ValueError):
    """An input or an option has a value that cannot be used.

    Input values that are not reflectances as expected (scale, NaN, range), and options
    outside their limits (``patch_size=0``, ``test_fraction=1.5``, ``device="cuda"``
    without CUDA...). Also a :class:`ValueError`, as Python code expects of a bad value.

    Examples
    --------
    >>> import xharmonise
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((100, 100))
    >>> dn = pair.src * 10_000  # DN-like floats, no scale_factor attribute
    >>> xharmonise.fit(dn, pair.ref, method="linear", patch_size=8)
    Traceback (most recent call last):
        ...
    xharmonise.errors.InputValueError: the source does not look like reflectance after ...
    >>> xharmonise.fit(pair.src, pair.ref, method="linear", patch_size=0)
    Traceback (most recent call last):
        ...
    xharmonise.errors.InputValueError: patch_size=0 is not allowed: give an integer of at least 1...
    """


class InputTypeError(HarmoniseError, TypeError):
    """An input or an option is of the wrong type (a NumPy array for an image, a string
    for a number...). Also a :class:`TypeError`, as Python code expects.

    Examples
    --------
    >>> import xharmonise
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((100, 100))
    >>> xharmonise.fit(pair.src.values, pair.ref, method="linear")
    Traceback (most recent call last):
        ...
    xharmonise.errors.InputTypeError: the source is a numpy.ndarray: pass an xarray.DataArray ...
    """


class DimensionError(InputValueError):
    """An image's dimensions are not ``(band, y, x)``: other names, another order, a
    ``time`` dimension with several dates, or other extra dimensions.

    Dimensions of length 1 other than ``band``, ``y`` and ``x`` (a single date, a
    singleton level) are dropped; anything else is refused with the fix.

    Examples
    --------
    >>> import xharmonise
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((100, 100))
    >>> xharmonise.fit(pair.src, pair.ref.transpose("y", "x", "band"), method="linear")
    Traceback (most recent call last):
        ...
    xharmonise.errors.DimensionError: the reference has dims ('y', 'x', 'band'): transpose it ...
    """


class DateError(InputValueError):
    """The dates of a reference time series cannot serve the source: its date is unknown,
    no reference date lies within the window, ``dates=`` names dates the reference lacks,
    or the mask's dates differ from the reference's.

    Examples
    --------
    >>> import xharmonise
    >>> from xharmonise.simulate import simulate_series
    >>> series = simulate_series((100, 100), days=(-40, 35))
    >>> xharmonise.fit(series.src, series.ref, method="linear")
    Traceback (most recent call last):
        ...
    xharmonise.errors.DateError: no reference date within 30 days of the source date ...
    """


class UnknownMethodError(InputValueError):
    """The requested method does not exist.

    Examples
    --------
    >>> import xharmonise
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((100, 100))
    >>> xharmonise.fit(pair.src, pair.ref, method="random_forest")
    Traceback (most recent call last):
        ...
    xharmonise.errors.UnknownMethodError: unknown method 'random_forest': choose one of ...
    """


class ModelFileError(HarmoniseError):
    """A model file is missing, corrupted, truncated or unsafe.

    Examples
    --------
    >>> import xharmonise
    >>> xharmonise.load("no-such-model.safetensors")
    Traceback (most recent call last):
        ...
    xharmonise.errors.ModelFileError: no model file at no-such-model.safetensors: check the path
    """


class StoreExistsError(HarmoniseError):
    """The output store exists and overwriting was not asked for.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> import xharmonise
    >>> ds = xr.Dataset({"prediction": (("band", "y", "x"), np.zeros((1, 4, 4), "f4"))})
    >>> xharmonise.to_zarr(ds, "memory://store-exists-example.zarr")
    >>> xharmonise.to_zarr(ds, "memory://store-exists-example.zarr")
    Traceback (most recent call last):
        ...
    xharmonise.errors.StoreExistsError: memory://store-exists-example.zarr exists: ...
    >>> xharmonise.to_zarr(ds, "memory://store-exists-example.zarr", mode="w")  # replace it
    """


class DetailLossWarning(UserWarning):
    """The model alters full-resolution spatial detail (ConvCalibNet applied at 2 m).

    Examples
    --------
    >>> import warnings
    >>> import xharmonise
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((100, 100))
    >>> model = xharmonise.fit(pair.src, pair.ref, method="convcalibnet", patch_size=8,
    ...                        iterations=2, batch_size=2, progress=False)
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     out = xharmonise.predict(pair.src, model)
    >>> [w.category.__name__ for w in caught]
    ['DetailLossWarning']
    """


class UnknownBandWarning(UserWarning):
    """A reference band name that is no Sentinel-2 band: its MTF is a default, not its own.

    Sentinel-2 names are recognised in the loaders' spellings (``B2``/``B02``/``B8A``,
    Earth Search's ``blue``, ``nir``, ``rededge1``..., Theia's ``FRE_B2``); other names,
    e.g. a GeoTIFF's unnamed bands ``1, 2, 3, 4``, get
    :data:`xharmonise.psf.DEFAULT_MTF`.

    Examples
    --------
    >>> import warnings
    >>> import xharmonise
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((100, 100))
    >>> ref = pair.ref.assign_coords(band=["1", "2", "3", "4"])  # a GeoTIFF without names
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always", xharmonise.UnknownBandWarning)
    ...     model = xharmonise.fit(pair.src, ref, method="linear", patch_size=8)
    >>> print(caught[0].message)  # doctest: +ELLIPSIS
    reference bands ['1', '2', '3', '4'] are no Sentinel-2 band names ...
    """


class CalibrationWarning(UserWarning):
    """A variance head left uncalibrated: too few validation patches to calibrate it on.

    The model records it (``model.calibration.skipped``); its σ² is the head's own.
    Fit a larger pair, or a smaller ``patch_size``, for more validation patches.

    Examples
    --------
    >>> import warnings
    >>> import xharmonise
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((200, 200), seed=0)
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always", xharmonise.CalibrationWarning)
    ...     model = xharmonise.fit(pair.src, pair.ref, variance=True, patch_size=8,
    ...                            iterations=2, progress=False)
    >>> print(caught[0].message)  # doctest: +ELLIPSIS
    the variance head is left uncalibrated: 1 validation patch(es), fewer than 3...
    """


class OutOfDomainWarning(UserWarning):
    """Many source pixels lie outside the domain the model was trained on.

    :func:`xharmonise.predict` with ``with_applicability=True`` warns when more than
    :data:`xharmonise.applicability.WARN_SHARE` (1 %) of the valid source pixels have an
    applicability below :data:`xharmonise.applicability.OUT_OF_DOMAIN` (0.001): land
    covers or conditions the training pair did not show (water, bright roofs, snow, a
    haze), where the mapping extrapolates. The message names their share. Mask them
    with ``ds["applicability"] >= 0.001``, or fit on a pair that shows them.

    Examples
    --------
    >>> import warnings
    >>> import xharmonise
    >>> from xharmonise.simulate import simulate_pair
    >>> dry = simulate_pair((300, 300), seed=0, without=("water", "roof"))
    >>> model = xharmonise.fit(dry.src, dry.ref, method="linear", patch_size=8)
    >>> scene = simulate_pair((300, 300), seed=1)  # with water and roofs
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always", xharmonise.OutOfDomainWarning)
    ...     out = xharmonise.predict(scene.src, model, with_applicability=True)
    >>> print("warned:", caught[0].message)  # doctest: +ELLIPSIS
    warned: ...% of the source pixels (90000 valid pixels) lie outside the domain the model...
    """
