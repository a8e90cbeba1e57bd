"""A Sentinel-2 time series as the reference: which dates a fit learns from.

Dates matter more than data: crops grow and are harvested, so a date ten days from the
source gives several times the error of the nearest one (measured on
:func:`xharmonise.simulate.simulate_series`: 3-4x the 2 m RMSE of a linear map). Pooling
every date at a place would also give one source pixel contradicting targets. So a series
is turned into one reference image, pixel by pixel: each reference pixel comes from the
nearest date (to the source's) among the dates chosen where it is clear, and stays masked
where none is. The policies choose the dates:

``"auto"`` (default)
    The nearest date alone while it has :data:`AUTO_MIN_PATCHES` patches' worth of clear
    pixels over the overlap; otherwise the next nearest dates, in order, fill its masked
    pixels until the composite has them (or the dates within ``max_days`` run out).
``"nearest"``
    The nearest date only, however cloudy.
``"all"``
    Every date within ``max_days``: each pixel from its nearest clear date.
a list of dates
    Those dates (each matched to the reference date of the same UTC day), composited by
    distance to the source date.

The composite is lazy: reading it reads only the dates chosen, and only the clear-pixel
counts (at 10 m) are computed to choose them.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
import xarray as xr

from xharmonise.errors import DateError, DimensionError, GridError

__all__ = [
    "AUTO_MIN_PATCHES",
    "DEFAULT_MAX_DAYS",
    "POLICIES",
    "DatedReference",
    "as_date",
    "compose",
    "source_date",
]

#: Date policies by name (a list of dates is the explicit one).
POLICIES = ("auto", "nearest", "all")

#: Days from the source date beyond which no reference date is used.
DEFAULT_MAX_DAYS = 30.0

#: Clear pixels the ``"auto"`` policy wants, in patches: enough to train and score any
#: method on its own date (16 patches of 32 x 32 are 16 384 pixels at 10 m, 1.6 km²).
AUTO_MIN_PATCHES = 16

# Source attributes that hold an acquisition date (rioxarray reads GeoTIFF tags as
# attributes; DIMAP-derived files and hand-made arrays use the others).
_DATE_ATTRS = ("time", "datetime", "acquisition_date", "ACQUISITION_DATE", "TIFFTAG_DATETIME")


@dataclass(frozen=True)
class DatedReference:
    """A reference series reduced to one image for a source date.

    Attributes
    ----------
    ref : xarray.DataArray
        (band, y, x) composite, lazy when the series is.
    mask : xarray.DataArray
        (y, x) True where no chosen date is clear.
    which : xarray.DataArray
        (y, x) int16: index into ``dates`` of the date each pixel comes from, -1 where
        none.
    dates : tuple of numpy.datetime64
        The dates chosen, nearest to the source first.
    trusted : int
        How many of ``dates`` (0 or 1) need no check for changed ground: the nearest
        candidate date when it is used, or the one date given explicitly.
    source : numpy.datetime64
        The source date.
    record : dict
        JSON-able facts for the model: source date, policy, max_days, candidates within
        the window with their clear pixels, the dates used and the clear pixels each
        gives the composite (over the source's footprint).
    """

    ref: xr.DataArray
    mask: xr.DataArray
    which: xr.DataArray
    dates: tuple[np.datetime64, ...]
    source: np.datetime64
    record: dict[str, Any]
    trusted: int = 1


def as_date(value: Any, name: str) -> np.datetime64:
    """``value`` as a UTC ``datetime64[s]``, or a :class:`~xharmonise.errors.DateError`.

    Accepts ISO strings, ``datetime``/``date``, ``numpy.datetime64``, pandas Timestamps
    and GeoTIFF's ``YYYY:MM:DD HH:MM:SS``; time zones are converted to UTC.

    Examples
    --------
    >>> as_date("2024-06-15", "src_time"), as_date("2024:06:15 10:30:00", "src_time")
    (np.datetime64('2024-06-15T00:00:00'), np.datetime64('2024-06-15T10:30:00'))
    """
    try:
        if isinstance(value, np.datetime64):
            value = value.astype("datetime64[s]")
        elif isinstance(value, np.ndarray) and value.dtype.kind == "M" and value.size == 1:
            value = value.reshape(())[()].astype("datetime64[s]")
        if isinstance(value, str):
            text = value.strip()
            if len(text) >= 19 and text[4] == ":" and text[7] == ":":
                text = text[:4] + "-" + text[5:7] + "-" + text[8:]
            text = text.replace("Z", "+00:00")
            value = _dt.datetime.fromisoformat(text)
        if isinstance(value, _dt.datetime) and value.tzinfo is not None:
            value = value.astimezone(_dt.UTC).replace(tzinfo=None)
        if hasattr(value, "to_datetime64"):  # pandas Timestamp
            value = value.tz_convert(None) if getattr(value, "tz", None) else value
            value = value.to_datetime64()
        out = np.datetime64(value, "s")
    except (TypeError, ValueError) as err:
        raise DateError(
            f"{name}={value!r} is not a date: give an ISO date such as '2024-06-15' or "
            "'2024-06-15T10:30:00Z', a datetime or a numpy.datetime64"
        ) from err
    if np.isnat(out):
        raise DateError(f"{name} is NaT: give the acquisition date, e.g. '2024-06-15'")
    return out


def source_date(src: Any, src_time: Any = None) -> np.datetime64 | None:
    """The source's acquisition date: ``src_time``, else a ``time`` coordinate (scalar or
    of length 1), else a date attribute; None when nothing says.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> src = xr.DataArray(np.zeros((1, 2, 2)), dims=("band", "y", "x"),
    ...                    coords={"time": np.datetime64("2024-06-15T10:30")})
    >>> source_date(src)
    np.datetime64('2024-06-15T10:30:00')
    """
    if src_time is not None:
        return as_date(src_time, "src_time")
    if isinstance(src, xr.DataArray | xr.Dataset):
        if "time" in src.coords and src["time"].size == 1:
            return as_date(src["time"].values.reshape(())[()], "the source's time")
        attrs = src.attrs
        for key in _DATE_ATTRS:
            if key in attrs:
                return as_date(attrs[key], f"the source's {key} attribute")
    return None


def _days(times: np.ndarray, source: np.datetime64) -> np.ndarray:
    return (times.astype("datetime64[s]") - source) / np.timedelta64(1, "D")


def _explicit(chosen: Sequence[Any], times: np.ndarray) -> list[int]:
    days = times.astype("datetime64[D]")
    out: list[int] = []
    for value in chosen:
        day = as_date(value, "dates").astype("datetime64[D]")
        match = np.flatnonzero(days == day)
        if not len(match):
            listed = ", ".join(str(d) for d in days)
            raise DateError(
                f"dates= names {day}, which the reference does not have (its dates: "
                f"{listed}): give dates of the reference"
            )
        out.extend(int(i) for i in match if int(i) not in out)
    return out


def _series_mask(mask: xr.DataArray | None, ref: xr.DataArray) -> xr.DataArray | None:
    """The mask as (time, y, x) matching the reference's dates, or None."""
    if mask is None:
        return None
    if "time" not in mask.dims:
        # One mask for every date (e.g. a static water or no-data mask).
        return mask.expand_dims(time=ref.sizes["time"]).assign_coords(time=ref["time"])
    if mask.sizes["time"] != ref.sizes["time"] or (
        "time" in mask.coords
        and not np.array_equal(
            mask["time"].values.astype("datetime64[s]"), ref["time"].values.astype("datetime64[s]")
        )
    ):
        have = mask["time"].values if "time" in mask.coords else f"{mask.sizes['time']} dates"
        raise DateError(
            f"the mask's dates ({have}) do not match the reference's "
            f"({ref['time'].values}): give one mask per reference date, e.g. "
            "cloud_mask_from_scl(scl, like=ref) on the SCL loaded with the same items"
        )
    return mask.transpose("time", ...)


def compose(
    ref: xr.DataArray,
    mask: xr.DataArray | None,
    source: np.datetime64 | None,
    *,
    policy: str | Sequence[Any] = "auto",
    max_days: float = DEFAULT_MAX_DAYS,
    window: tuple[slice, slice] | None = None,
    patch_size: int = 32,
) -> DatedReference:
    """The reference image a fit learns from, for a (time, band, y, x) series.

    Parameters
    ----------
    ref : xarray.DataArray
        (time, band, y, x) reflectance with a datetime ``time`` coordinate.
    mask : xarray.DataArray, optional
        Cloud mask (time, y, x) with the reference's dates, or (y, x) for every date.
    source : numpy.datetime64 or None
        The source date; None is refused (the dates cannot be chosen).
    policy : {"auto", "nearest", "all"} or sequence of dates
        See the module's description.
    max_days : float
        The window around the source date (not applied to explicit dates).
    window : (slice, slice), optional
        Rows and columns of the reference the source covers: clear pixels are counted
        there.
    patch_size : int
        Patch side, for ``"auto"``'s clear-pixel need.

    Returns
    -------
    DatedReference

    Raises
    ------
    DateError
        No source date, no reference date in the window, explicit dates the reference
        lacks, masks whose dates do not match.

    Examples
    --------
    >>> from xharmonise.simulate import simulate_series
    >>> series = simulate_series((200, 200), days=(-6, -1, 4), ref_clouds=[0, 0.9, 0])
    >>> chosen = compose(series.ref, series.mask, series.src_date, policy="nearest")
    >>> [str(d)[:10] for d in chosen.dates]
    ['2024-06-14']
    """
    if "time" not in ref.coords or not np.issubdtype(ref["time"].dtype, np.datetime64):
        raise DimensionError(
            f"the reference has a time dimension with {ref.sizes['time']} dates but no "
            "datetime coordinate: give its dates, e.g. ref.assign_coords(time=pd.to_datetime("
            "[...])), or select one image with ref.isel(time=0)"
        )
    if source is None:
        raise DateError(
            f"the reference has {ref.sizes['time']} dates but the source's date is unknown: "
            "pass src_time= (e.g. src_time='2024-06-15T10:30:00Z'), or give the source a "
            "time coordinate (src.assign_coords(time=...))"
        )
    times = ref["time"].values.astype("datetime64[s]")
    days = _days(times, source)
    masks = _series_mask(mask, ref)
    if isinstance(policy, str):
        within = np.flatnonzero(np.abs(days) <= max_days)
        if not len(within):
            nearest = float(days[np.argmin(np.abs(days))])
            raise DateError(
                f"no reference date within {max_days:g} days of the source date "
                f"{source} (the nearest is {nearest:+.1f} days away): give dates nearer "
                "the source, or widen the window with max_days="
            )
        candidates = [int(i) for i in within[np.lexsort((days[within], np.abs(days[within])))]]
    else:
        picked = _explicit(policy, times)
        candidates = sorted(picked, key=lambda i: (abs(days[i]), days[i]))
    clear = _clear(ref, masks, candidates, window)
    counts = [int(c.sum()) for c in clear]
    if policy == "nearest":
        used = candidates[:1]
    elif policy == "auto":
        need = AUTO_MIN_PATCHES * patch_size**2
        union = np.zeros_like(clear[0])
        used = []
        for i, c in zip(candidates, clear, strict=True):
            if used and int(union.sum()) >= need:
                break
            if c.any():  # a date clouded over gives nothing
                used.append(i)
                union |= c
        used = used or candidates[:1]
    else:
        used = candidates
    # A date whose clear pixels are all clear on a nearer date too gives nothing: it is
    # not read, and the record does not list it.
    taken = np.zeros_like(clear[0])
    gives: dict[int, int] = {}
    for i in used:
        c = clear[candidates.index(i)]
        gives[i] = int((c & ~taken).sum())
        taken |= c
    used = [i for i in used if gives[i]] or used[:1]
    ref_c, mask_c, which = _composite(ref, masks, used)
    record = {
        "source": str(source),
        "policy": policy if isinstance(policy, str) else "explicit",
        "max_days": float(max_days),
        "candidates": [
            {"date": str(times[i]), "days": float(days[i]), "clear_pixels": n}
            for i, n in zip(candidates, counts, strict=True)
        ],
        "used": [str(times[i]) for i in used],
        "composite_pixels": {str(times[i]): gives[i] for i in used},
    }
    return DatedReference(
        ref=ref_c,
        mask=mask_c,
        which=which,
        dates=tuple(times[i] for i in used),
        source=source,
        record=record,
        trusted=int(used[0] == candidates[0]),
    )


def _clear(
    ref: xr.DataArray,
    masks: xr.DataArray | None,
    indices: list[int],
    window: tuple[slice, slice] | None,
) -> list[np.ndarray]:
    """Per date, (Y, X) in memory: finite in every band and not masked, over ``window``."""
    rows, cols = window if window is not None else (slice(None), slice(None))
    maps = []
    for i in indices:
        ok = ref.isel(time=i, y=rows, x=cols).notnull().all("band")
        if masks is not None:
            ok = ok & ~(masks.isel(time=i, y=rows, x=cols) != 0)
        maps.append(ok.data)
    return [np.asarray(m, dtype=bool) for m in dask.compute(*maps)]


def _composite(
    ref: xr.DataArray, masks: xr.DataArray | None, used: list[int]
) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray]:
    """Each pixel from the first date of ``used`` where it is clear (lazily)."""
    first = ref.isel(time=used[0], drop=True)
    out = first
    which = xr.full_like(first.isel(band=0, drop=True), -1, dtype=np.int16)
    for k, i in enumerate(used):
        date = ref.isel(time=i, drop=True)
        ok = date.notnull().all("band")
        if masks is not None:
            ok = ok & ~(masks.isel(time=i, drop=True) != 0)
        take = ok & (which < 0)
        out = out.where(~take, date)
        which = which.where(~take, np.int16(k))
    out = out.transpose("band", "y", "x")
    out.attrs = dict(first.attrs)
    if "spatial_ref" in ref.coords:
        out = out.assign_coords(spatial_ref=ref["spatial_ref"])
    if out.sizes["y"] != ref.sizes["y"] or out.sizes["x"] != ref.sizes["x"]:
        raise GridError("the reference dates do not share one grid")  # pragma: no cover
    mask = (which < 0) & first.notnull().all("band")
    return out, mask.rename("mask"), which.rename("date_index")
