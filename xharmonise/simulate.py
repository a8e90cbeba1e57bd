"""A physically motivated Pleiades / Sentinel-2 pair generator with a known truth.

The surface is an analytic function of world coordinates (metres in the reference CRS):
parcels with class spectra and texture, roads and small buildings whose detail only the
2 m sensor resolves. Because every value is a function of position and of a
counter-based hash of (seed, position), any block of either image can be generated on its
own: large scenes are built lazily with Dask and chunked output equals unchunked output.

Forward models
--------------
* Sentinel-2 (reference): surface reflectance in B2, B3, B4, B8 seen through the per-band
  Gaussian MTF (``xharmonise.psf``), one sample per 10 m pixel, plus noise; optional
  clouds that are returned as a mask (the "masked" clouds of an L2A product).
* Pleiades (source): the same surface displaced by ``shift`` metres, seen through wider
  spectral bands (a band-mixing matrix), optionally through the atmosphere (TOA: path
  radiance, transmittance and spherical albedo, a non-linear relation), calibrated with
  BRDF-like per-band gains and offsets, plus noise and optional unmasked clouds.

Without TOA and clouds, the S2-equivalent of a Pleiades pixel is an exact affine function
of it: ``Truth.mapping`` holds that function.
"""

from __future__ import annotations

import datetime
import functools
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dask.array as da
import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from affine import Affine
from pyproj import CRS, Transformer

from xharmonise import psf

__all__ = [
    "COVERS",
    "S2_BANDS",
    "SRC_BANDS",
    "SimulatedPair",
    "SimulatedSeries",
    "Truth",
    "simulate_pair",
    "simulate_series",
]

#: Sentinel-2 bands the simulator knows (blue, green, red, NIR at 10 m).
S2_BANDS = ("B2", "B3", "B4", "B8")
#: The matching Pleiades bands, in the same order (the source's band names).
SRC_BANDS = ("B0", "B1", "B2", "B3")

# Surface classes: S2 B2, B3, B4, B8 reflectance (typical library values).
_CLASSES = np.array(
    [
        [0.060, 0.050, 0.030, 0.020],  # water
        [0.040, 0.080, 0.040, 0.400],  # green crop
        [0.030, 0.050, 0.030, 0.280],  # forest
        [0.100, 0.140, 0.180, 0.250],  # bare soil
        [0.070, 0.100, 0.120, 0.220],  # dry grass
        [0.120, 0.130, 0.140, 0.180],  # urban fabric
        [0.220, 0.270, 0.320, 0.400],  # bright bare soil (chalk, sand)
    ]
)
# Bright soils matter: the TOA relation bends most over a wide reflectance range.
_CLASS_WEIGHTS = np.array([0.05, 0.28, 0.18, 0.17, 0.12, 0.1, 0.1])
_URBAN = 5
_ROAD = np.array([0.090, 0.100, 0.110, 0.130])
_ROOFS = np.array(
    [
        [0.080, 0.100, 0.250, 0.300],  # red tiles
        [0.200, 0.210, 0.220, 0.240],  # grey concrete
        [0.350, 0.370, 0.380, 0.400],  # bright membrane
    ]
)
_CLOUD = np.array([0.70, 0.72, 0.73, 0.75])

#: Land covers a scene can be simulated without (``without=``): the parcel classes (in
#: ``_CLASSES`` order), roads, and the roof kinds (in ``_ROOFS`` order); ``"roof"`` names
#: the three roof kinds at once.
COVERS = (
    "water",
    "crop",
    "forest",
    "soil",
    "grass",
    "urban",
    "bright_soil",
    "road",
    "red_roof",
    "grey_roof",
    "bright_roof",
)
_ROOF_KINDS = ("red_roof", "grey_roof", "bright_roof")

# Pleiades bands are wider than S2's: each sees some of its neighbours.
_MIXING = np.array(
    [
        [0.85, 0.15, 0.00, 0.00],
        [0.10, 0.80, 0.10, 0.00],
        [0.00, 0.10, 0.85, 0.05],
        [0.00, 0.00, 0.04, 0.96],
    ]
)
_GAINS = np.array([1.04, 0.98, 1.03, 0.95])
_OFFSETS = np.array([0.005, 0.000, -0.003, 0.010])
# Atmosphere per Pleiades band: path reflectance, total transmittance, spherical albedo,
# of a hazy continental atmosphere (aerosol optical thickness about 0.5 at 550 nm, as
# 6S gives them); the spherical albedo term rho / (1 - S rho) is what bends the TOA
# relation away from an affine one.
_PATH = np.array([0.110, 0.075, 0.050, 0.025])
_TRANS = np.array([0.62, 0.72, 0.80, 0.87])
_SPHERICAL = np.array([0.28, 0.22, 0.16, 0.10])

# Radiometric noise, reflectance units: Pleiades at 2 m; Sentinel-2 L2A at 10 m (SNR
# above 150 at typical radiances).
_SRC_NOISE = 0.003
_REF_NOISE = 0.0012
_SCALE = 1e-4
_REF_ADD_OFFSET = -0.1  # S2 L2A processing baseline >= 04.00 (BOA_ADD_OFFSET = -1000)

# Independent hash streams so every random field differs.
_S_PARCEL, _S_TEXTURE, _S_FINE, _S_ROAD, _S_BUILD, _S_SRC_CLOUD, _S_REF_CLOUD = range(1, 8)
_S_SRC_NOISE, _S_REF_NOISE = 8, 9
_S_PHENOLOGY, _S_HARVEST, _S_DATE = 10, 11, 12

# Phenology (simulate_series): a parcel's greenness follows a logistic green-up in time,
# g(t) = 1 / (1 + exp(-(t - mid) / width)), mid and width drawn per parcel, so parcels
# around the source date do not all move alike. Reflectance is scaled per band by
# exp(gain * amplitude * (g(t) - g(0))): exactly the static surface at the source date,
# always positive, red falling and NIR rising as the canopy closes. The amplitude is per
# class: crops move most, grass and forest barely, non-vegetation not at all.
_GREENING_GAIN = np.array([-0.6, -0.3, -1.4, 0.7])
_GREENING = np.array([0.0, 1.0, 0.1, 0.0, 0.3, 0.0, 0.0])
_GREENUP_MID = (-30.0, 30.0)  # days from the source date: mid-season spread over two months
_GREENUP_WIDTH = (3.0, 6.0)  # days: a canopy closes over a few weeks (about 4 widths)
_CROP, _BARE_SOIL = 1, 3


@dataclass
class Truth:
    """What the simulator knows and a real pair never tells.

    Attributes
    ----------
    reflectance : xarray.DataArray
        S2-band surface reflectance seen by each source pixel, on the source grid: the
        ideal harmonised source (NaN at no-data).
    mapping : numpy.ndarray or None
        (band, band + 1) affine map [A | b] with ``s2 = A @ src + b`` for clear TOC
        pixels; None for TOA pairs, where no affine map is exact.
    shift : tuple of float
        Displacement of the source content relative to the reference, metres (east, north).
    src_clouds : xarray.DataArray
        Boolean, source grid: unmasked clouds in the source.
    ref_clouds : xarray.DataArray
        Boolean, reference grid: clouds in the reference (also returned as ``mask``).
    src_bands, ref_bands : tuple of str
        Band names of the source (``B0``..``B3``) and of the reference (``B2``..``B8``),
        in pairing order.

    Examples
    --------
    >>> pair = simulate_pair((100, 100), shift=(2.0, -1.0))
    >>> truth = pair.truth
    >>> truth.shift, truth.mapping.shape, truth.reflectance.shape
    ((2.0, -1.0), (4, 5), (4, 100, 100))

    The affine mapping explains the clear source pixels up to the sensor noise:

    >>> import numpy as np
    >>> A, b = truth.mapping[:, :4], truth.mapping[:, 4]
    >>> s2 = np.einsum("ij,jyx->iyx", A, pair.src.values) + b[:, None, None]
    >>> bool(np.abs(s2 - truth.reflectance.values).mean() < 0.01)
    True
    """

    reflectance: xr.DataArray
    mapping: np.ndarray | None
    shift: tuple[float, float]
    src_clouds: xr.DataArray
    ref_clouds: xr.DataArray
    src_bands: tuple[str, ...] = field(default_factory=tuple)
    ref_bands: tuple[str, ...] = field(default_factory=tuple)


@dataclass
class SimulatedPair:
    """A simulated source / reference pair, its reference cloud mask and its truth.

    Returned by :func:`simulate_pair`.

    Attributes
    ----------
    src : xarray.DataArray
        Pleiades-like source (band, y, x) at ``src_resolution`` (2 m), with a CRS.
    ref : xarray.DataArray
        Sentinel-2-like reference (band, y, x) at 10 m, with a CRS.
    mask : xarray.DataArray
        Boolean (y, x) on the reference grid, True = reference cloud: what ``fit`` takes
        as ``mask=``.
    truth : Truth
        What a real pair never tells.

    Examples
    --------
    >>> pair = simulate_pair((100, 100), ref_clouds=0.2)
    >>> pair.src.rio.resolution(), pair.ref.rio.resolution()
    ((2.0, -2.0), (10.0, -10.0))
    >>> pair.mask.dims, pair.mask.dtype
    (('y', 'x'), dtype('bool'))
    """

    src: xr.DataArray
    ref: xr.DataArray
    mask: xr.DataArray
    truth: Truth

    def to_geotiff(self, directory: str | Path) -> dict[str, Path]:
        """Write ``src.tif``, ``ref.tif`` and ``mask.tif`` into ``directory``.

        Parameters
        ----------
        directory : str or path-like
            Folder to write into; created when missing. Existing files are replaced.

        Returns
        -------
        dict of str to pathlib.Path
            The written files by name (``src``, ``ref``, ``mask``): tiled, deflate-
            compressed GeoTIFFs with the CRS and the band names as band descriptions; the
            mask as uint8 (1 = cloud). Dask-backed arrays are streamed to the file chunk by
            chunk.

        Examples
        --------
        >>> import tempfile, rioxarray
        >>> pair = simulate_pair((100, 100))
        >>> paths = pair.to_geotiff(tempfile.mkdtemp())
        >>> sorted(paths)
        ['mask', 'ref', 'src']
        >>> src = rioxarray.open_rasterio(paths["src"])
        >>> src.shape, src.rio.crs == pair.src.rio.crs
        ((4, 100, 100), True)
        >>> src.attrs["long_name"]  # band names, as band descriptions
        ('B0', 'B1', 'B2', 'B3')
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name, arr in (("src", self.src), ("ref", self.ref), ("mask", self.mask)):
            path = directory / f"{name}.tif"
            out = arr.astype("uint8") if arr.dtype == bool else arr
            if "band" not in out.dims:
                out = out.expand_dims(band=[name])
            # GeoTIFF numbers its bands; the names go into the band descriptions, which
            # rioxarray reads back as ``long_name`` (they pick each band's MTF in fit).
            names = tuple(str(b) for b in out["band"].values)
            out = out.assign_coords(band=np.arange(1, out.sizes["band"] + 1))
            out.attrs["long_name"] = names
            # A lock makes rioxarray stream Dask chunks to the file instead of loading all.
            out.rio.to_raster(path, tiled=True, lock=threading.Lock(), compress="deflate")
            paths[name] = path
        return paths


@dataclass(frozen=True)
class SimulatedSeries:
    """A simulated source and a Sentinel-2 time series around its date, with their truth.

    Returned by :func:`simulate_series`. The surface moves between dates: crops green up
    (red falls, NIR rises) at their own pace, and some crop parcels may be harvested.
    Everything the series shows is also known exactly here.

    Attributes
    ----------
    src : xarray.DataArray
        Pleiades-like source (band, y, x), as :attr:`SimulatedPair.src`, with a scalar
        ``time`` coordinate: the source date.
    ref : xarray.DataArray
        Sentinel-2-like references (time, band, y, x) at 10 m, dates ascending, with a CRS.
    mask : xarray.DataArray
        Boolean (time, y, x) on the reference grid, True = masked cloud at that date.
    truth : Truth
        The truth at the source date, as :attr:`SimulatedPair.truth`: a prediction made
        from ``src`` is scored against ``truth.reflectance``. Its ``ref_clouds`` is
        ``mask``.
    truth_at : xarray.DataArray
        (time, band, y, x) on the source grid: the S2-band surface each source pixel would
        have seen at each reference date, i.e. what the surface did between the dates.
    changed : xarray.DataArray
        Boolean (y, x) on the source grid: pixels of harvested parcels whose harvest falls
        between the source date and at least one reference date. The gradual phenology is
        not a change.
    changed_ref : xarray.DataArray
        Boolean (time, y, x) on the reference grid: pixels whose footprint overlaps a
        parcel harvested between the source date and that date.

    Examples
    --------
    >>> series = simulate_series((100, 100), days=(-3, 0, 2))
    >>> series.ref.dims, series.mask.dims, series.truth_at.dims
    (('time', 'band', 'y', 'x'), ('time', 'y', 'x'), ('time', 'band', 'y', 'x'))
    >>> series.days, str(series.src_date)
    ((-3, 0, 2), '2024-06-15T00:00:00.000000000')
    """

    src: xr.DataArray
    ref: xr.DataArray
    mask: xr.DataArray
    truth: Truth
    truth_at: xr.DataArray
    changed: xr.DataArray
    changed_ref: xr.DataArray

    @property
    def src_date(self) -> np.datetime64:
        """The source acquisition date (datetime64[ns])."""
        return np.datetime64(self.src["time"].values[()].item(), "ns")

    @property
    def dates(self) -> np.ndarray:
        """The reference dates (datetime64[ns]), ascending."""
        return self.ref["time"].values

    @property
    def days(self) -> tuple[int, ...]:
        """The reference dates in whole days from the source date, ascending."""
        return tuple(int(d) for d in (self.dates - self.src_date) // np.timedelta64(1, "D"))


# --------------------------------------------------------------------------- hashing
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    # splitmix64 finaliser: a counter-based generator, so a value depends only on its key.
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _hash(seed: int, stream: int, *keys: np.ndarray | int) -> np.ndarray:
    ints = [np.asarray(k).astype(np.int64) for k in keys]
    table = _lattice(ints)
    if table is not None:
        # Many pixels share few keys (a parcel's, a lattice cell's): hash each distinct
        # key once, on the keys' bounding box, and look the pixels up. Same values.
        lows, grids, where = table
        return _hash_keys(seed, stream, grids)[
            tuple(k - lo for k, lo in zip(where, lows, strict=True))
        ]
    return _hash_keys(seed, stream, ints)


def _hash_keys(seed: int, stream: int, keys: list[np.ndarray]) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = _mix(np.asarray(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) ^ _GOLDEN * np.uint64(stream)))
        for k in keys:
            h = _mix(h ^ (k.view(np.uint64) + _GOLDEN))
    return h


# Below this many values a direct hash costs less than finding the keys' bounding box.
_LATTICE_MIN_SIZE = 4096


def _lattice(
    keys: list[np.ndarray],
) -> tuple[list[int], list[np.ndarray], list[np.ndarray]] | None:
    """The keys' bounding-box lattice when it is much smaller than the keys, else None.

    Returns the lower corner, the lattice's keys (scalar keys kept, array keys as open
    grids over the box) and the array keys broadcast to the output shape.
    """
    arrays = [i for i, k in enumerate(keys) if k.ndim > 0]
    if not arrays:
        return None
    shape = np.broadcast_shapes(*(keys[i].shape for i in arrays))
    size = math.prod(shape)
    if size < _LATTICE_MIN_SIZE:
        return None
    lows = [int(keys[i].min()) for i in arrays]
    spans = [int(keys[i].max()) - lo + 1 for i, lo in zip(arrays, lows, strict=True)]
    if math.prod(spans) * 4 > size:
        return None
    grids = list(keys)
    for axis, (i, lo, span) in enumerate(zip(arrays, lows, spans, strict=True)):
        view = [1] * len(arrays)
        view[axis] = span
        grids[i] = np.arange(lo, lo + span, dtype=np.int64).reshape(view)
    where = [np.broadcast_to(keys[i], shape) for i in arrays]
    return lows, grids, where


def _uniform(seed: int, stream: int, *keys: np.ndarray | int) -> np.ndarray:
    return (_hash(seed, stream, *keys) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _normal(seed: int, stream: int, *keys: np.ndarray | int) -> np.ndarray:
    u1 = _uniform(seed, stream, *keys, 0)
    u2 = _uniform(seed, stream, *keys, 1)
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)


def _value_noise(seed: int, stream: int, x: np.ndarray, y: np.ndarray, cell: float) -> np.ndarray:
    """Smooth noise in [0, 1]: hashed lattice values, smoothstep-interpolated."""
    fx, fy = x / cell, y / cell
    ix, iy = np.floor(fx), np.floor(fy)
    tx, ty = fx - ix, fy - iy
    tx, ty = tx * tx * (3 - 2 * tx), ty * ty * (3 - 2 * ty)
    ix, iy = ix.astype(np.int64), iy.astype(np.int64)
    v00 = _uniform(seed, stream, ix, iy)
    v10 = _uniform(seed, stream, ix + 1, iy)
    v01 = _uniform(seed, stream, ix, iy + 1)
    v11 = _uniform(seed, stream, ix + 1, iy + 1)
    return (v00 * (1 - tx) + v10 * tx) * (1 - ty) + (v01 * (1 - tx) + v11 * tx) * ty


# --------------------------------------------------------------------------- season
@dataclass(frozen=True)
class _Season:
    """How the surface moves with time around the source date (see ``simulate_series``)."""

    harvest_day: float | None = None
    harvest_fraction: float = 0.0

    def bare(self, day: float) -> bool:
        """Whether harvested parcels show bare soil ``day`` days after the source date."""
        h = self.harvest_day
        if h is None:
            return False
        # The harvest falls between the source date and src + h: it is done from day h on
        # when h > 0; when h < 0 the source already sees it, dates up to h do not.
        return day >= h if h > 0 else day > h

    def apply(
        self,
        seed: int,
        refl: np.ndarray,
        cls: np.ndarray,
        owner_x: np.ndarray,
        owner_y: np.ndarray,
        brightness: np.ndarray,
        day: float,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Parcel spectra at ``day`` and which pixels belong to harvested crop parcels."""
        if day != 0:
            # Skipped at the source date: there the static surface must hold bit for bit.
            u_mid = _uniform(seed, _S_PHENOLOGY, owner_x, owner_y, 0)
            u_width = _uniform(seed, _S_PHENOLOGY, owner_x, owner_y, 1)
            mid = _GREENUP_MID[0] + (_GREENUP_MID[1] - _GREENUP_MID[0]) * u_mid
            width = _GREENUP_WIDTH[0] + (_GREENUP_WIDTH[1] - _GREENUP_WIDTH[0]) * u_width
            green = 1.0 / (1.0 + np.exp(-(day - mid) / width))
            green0 = 1.0 / (1.0 + np.exp(mid / width))
            delta = _GREENING[cls] * (green - green0)
            refl = refl * np.exp(_GREENING_GAIN.reshape(-1, *([1] * cls.ndim)) * delta)
        harvested = (cls == _CROP) & (
            _uniform(seed, _S_HARVEST, owner_x, owner_y) < self.harvest_fraction
        )
        if self.bare(day):
            soil = _CLASSES[_BARE_SOIL].reshape(-1, *([1] * cls.ndim)) * brightness
            refl = np.where(harvested, soil, refl)
        return refl, harvested


# --------------------------------------------------------------------------- surface
@dataclass(frozen=True)
class _Without:
    """Land covers left out of a scene (``without=``): parcel classes (indices into
    ``_CLASSES``), roof kinds (indices into ``_ROOFS``), roads."""

    classes: frozenset[int] = frozenset()
    roofs: frozenset[int] = frozenset()
    road: bool = False

    def __bool__(self) -> bool:
        return bool(self.classes or self.roofs or self.road)


def _without(names: Sequence[str]) -> _Without:
    """The covers ``names`` as a :class:`_Without`, or ValueError naming the known ones."""
    if isinstance(names, str):
        names = (names,)
    names = tuple(names)
    unknown = [n for n in names if n not in COVERS and n != "roof"]
    if unknown:
        raise ValueError(
            f"without={names!r}: unknown land cover(s) {unknown}; give some of {COVERS} or "
            "'roof' (every roof kind)"
        )
    classes = frozenset(i for i, c in enumerate(COVERS[: len(_CLASSES)]) if c in names)
    if len(classes) == len(_CLASSES):
        raise ValueError(f"without={names!r} leaves out every parcel class: keep one at least")
    roofs = {_ROOF_KINDS.index(n) for n in names if n in _ROOF_KINDS}
    if "roof" in names:
        roofs = set(range(len(_ROOFS)))
    return _Without(classes, frozenset(roofs), "road" in names)


def _surface(
    seed: int,
    x: np.ndarray,
    y: np.ndarray,
    season: _Season | None = None,
    day: float = 0.0,
    without: _Without | None = None,
) -> np.ndarray:
    """S2-band surface reflectance (4, *x.shape) at world coordinates x, y (metres).

    Without ``season`` it is the static surface of :func:`simulate_pair`; with one, the
    surface ``day`` days after the source date. ``without`` leaves land covers out.
    """
    return _surface_layers(seed, x, y, season, day, without)[0]


def _surface_layers(
    seed: int,
    x: np.ndarray,
    y: np.ndarray,
    season: _Season | None,
    day: float,
    without: _Without | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The surface and, with a ``season``, where harvested crop is visible (else None).

    With ``without``, a parcel of a class left out takes another class, drawn from a hash
    stream of its own among the classes kept (with their weights); a building whose roof
    kind is left out is not built; roads left out are not drawn. Everything else is the
    full scene's, value for value, and without ``without`` nothing extra is computed."""
    parcel = 120.0
    cx, cy = np.floor(x / parcel).astype(np.int64), np.floor(y / parcel).astype(np.int64)
    best = np.full(x.shape, np.inf)
    owner_x, owner_y = cx.copy(), cy.copy()
    # Jittered-grid Voronoi: the nearest seed is in one of the 3 x 3 neighbouring cells.
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            nx, ny = cx + dx, cy + dy
            sx = (nx + _uniform(seed, _S_PARCEL, nx, ny, 0)) * parcel
            sy = (ny + _uniform(seed, _S_PARCEL, nx, ny, 1)) * parcel
            d = (x - sx) ** 2 + (y - sy) ** 2
            closer = d < best
            best = np.where(closer, d, best)
            owner_x = np.where(closer, nx, owner_x)
            owner_y = np.where(closer, ny, owner_y)
    u = _uniform(seed, _S_PARCEL, owner_x, owner_y, 2)
    cls = np.searchsorted(np.cumsum(_CLASS_WEIGHTS), u * _CLASS_WEIGHTS.sum())
    cls = np.minimum(cls, len(_CLASSES) - 1)
    if without and without.classes:
        kept = np.array([c for c in range(len(_CLASSES)) if c not in without.classes])
        cumulative = np.cumsum(_CLASS_WEIGHTS[kept])
        redraw = _uniform(seed, _S_PARCEL, owner_x, owner_y, 4) * cumulative[-1]
        other = kept[np.minimum(np.searchsorted(cumulative, redraw), len(kept) - 1)]
        left_out = np.isin(cls, list(without.classes))
        cls = np.where(left_out, other, cls)
    brightness = 0.85 + 0.3 * _uniform(seed, _S_PARCEL, owner_x, owner_y, 3)
    refl = _CLASSES[cls].transpose(np.roll(np.arange(cls.ndim + 1), 1)) * brightness
    harvested = None
    if season is not None:
        refl, harvested = season.apply(seed, refl, cls, owner_x, owner_y, brightness, day)

    texture = 0.88 + 0.24 * _value_noise(seed, _S_TEXTURE, x, y, 24.0)
    fine = 0.94 + 0.12 * _value_noise(seed, _S_FINE, x, y, 4.0)
    refl = refl * texture * fine

    # Roads: one per 250 m band in each direction of a rotated frame, 6-10 m wide.
    theta = 0.35
    directions = ((math.cos(theta), math.sin(theta)), (-math.sin(theta), math.cos(theta)))
    for stream_key, (c, s) in enumerate(() if without and without.road else directions):
        u_ = x * c + y * s
        cell = np.floor(u_ / 250.0).astype(np.int64)
        centre = (cell + 0.2 + 0.6 * _uniform(seed, _S_ROAD, cell, stream_key)) * 250.0
        width = 6.0 + 4.0 * _uniform(seed, _S_ROAD, cell, stream_key + 2)
        on_road = np.abs(u_ - centre) < width / 2
        refl = np.where(on_road, _ROAD.reshape(-1, *([1] * x.ndim)), refl)
        if harvested is not None:
            harvested = harvested & ~on_road

    # Buildings: at most one per 30 m cell, far more likely in urban parcels.
    bcell = 30.0
    bx, by = np.floor(x / bcell).astype(np.int64), np.floor(y / bcell).astype(np.int64)
    p = np.where(cls == _URBAN, 0.8, 0.06)
    has = _uniform(seed, _S_BUILD, bx, by, 0) < p
    w = 8.0 + 12.0 * _uniform(seed, _S_BUILD, bx, by, 1)
    h = 8.0 + 12.0 * _uniform(seed, _S_BUILD, bx, by, 2)
    ox = (bcell - w) * _uniform(seed, _S_BUILD, bx, by, 3)
    oy = (bcell - h) * _uniform(seed, _S_BUILD, bx, by, 4)
    lx, ly = x - bx * bcell, y - by * bcell
    inside = has & (lx >= ox) & (lx < ox + w) & (ly >= oy) & (ly < oy + h)
    roof = np.minimum((_uniform(seed, _S_BUILD, bx, by, 5) * 3).astype(np.int64), 2)
    if without and without.roofs:
        inside = inside & ~np.isin(roof, list(without.roofs))
    roofs = _ROOFS[roof].transpose(np.roll(np.arange(roof.ndim + 1), 1))
    if harvested is not None:
        harvested = harvested & ~inside
    return np.where(inside, roofs, refl), harvested


def _cloud_noise(seed: int, stream: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return 0.65 * _value_noise(seed, stream, x, y, 240.0) + 0.35 * _value_noise(
        seed, stream + 100, x, y, 60.0
    )


@functools.lru_cache(maxsize=64)
def _cloud_threshold(fraction: float) -> float:
    # The noise's distribution is not uniform; its quantile, estimated once on a large
    # fixed sample, makes `fraction` the expected cloud cover.
    rng = np.random.default_rng(12345)
    x, y = rng.uniform(0, 1e6, (2, 200_000))
    return float(np.quantile(_cloud_noise(0, 0, x, y), 1.0 - fraction))


def _cloud_opacity(seed: int, stream: int, x: np.ndarray, y: np.ndarray, fraction: float):
    if fraction <= 0:
        return np.zeros(x.shape)
    n = _cloud_noise(seed, stream, x, y)
    # Opacity ramps from 0 to 1 just above the threshold: soft cloud edges.
    return np.clip((n - _cloud_threshold(round(fraction, 6))) / 0.03, 0.0, 1.0)


# --------------------------------------------------------------------------- grids
@dataclass(frozen=True)
class _Grid:
    crs: CRS
    transform: Affine
    shape: tuple[int, int]

    def centres(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        r = np.arange(rows.start, rows.stop) + 0.5
        c = np.arange(cols.start, cols.stop) + 0.5
        cc, rr = np.meshgrid(c, r)
        # affine annotates float vectors only; it maps coordinate arrays elementwise too.
        x, y = self.transform @ (cc, rr)  # type: ignore[operator]
        return np.asarray(x), np.asarray(y)

    def coords(self) -> dict[str, np.ndarray]:
        t = self.transform
        return {
            "y": t.f + t.e * (np.arange(self.shape[0]) + 0.5),
            "x": t.c + t.a * (np.arange(self.shape[1]) + 0.5),
        }


# Rows evaluated at once inside a block: bounds the surface model's float64 temporaries
# (a few dozen arrays the size of the slab) whatever the chunk size.
_SLAB_PIXELS = 1 << 17


def _by_slabs(fn, rows: slice, cols: slice, nbands: int, dtype) -> np.ndarray:
    width = cols.stop - cols.start
    step = max(1, _SLAB_PIXELS // max(width, 1))
    out = np.empty((nbands, rows.stop - rows.start, width), dtype)
    for r0 in range(rows.start, rows.stop, step):
        r1 = min(rows.stop, r0 + step)
        out[:, r0 - rows.start : r1 - rows.start] = fn(slice(r0, r1), cols)
    return out


def _lazy_field(grid: _Grid, nbands: int, chunks: int | None, fn, dtype) -> np.ndarray | da.Array:
    """Evaluate ``fn(rows, cols) -> (nbands, h, w)`` over a grid, lazily if chunked."""
    if chunks is None:
        return _by_slabs(fn, slice(0, grid.shape[0]), slice(0, grid.shape[1]), nbands, dtype)

    def block(_, block_info=None):
        (r0, r1), (c0, c1) = block_info[None]["array-location"][1:]
        return _by_slabs(fn, slice(r0, r1), slice(c0, c1), nbands, dtype)

    template = da.empty((nbands, *grid.shape), chunks=(nbands, chunks, chunks), dtype=dtype)
    return da.map_blocks(block, template, dtype=dtype, meta=np.empty((0, 0, 0), dtype))


def _dataarray(data, grid: _Grid, bands: Sequence[str] | None, name: str) -> xr.DataArray:
    coords = grid.coords()
    if bands is not None:
        arr = xr.DataArray(data, dims=("band", "y", "x"), coords={"band": list(bands), **coords})
    else:
        arr = xr.DataArray(data, dims=("y", "x"), coords=coords)
    arr.name = name
    arr = arr.rio.write_crs(grid.crs).rio.write_transform(grid.transform)
    return arr


# --------------------------------------------------------------------------- scene
_REF_RES, _FACTOR = 10.0, 5  # reference pixel size (m); source pixels per reference pixel
_Surface = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True, eq=False)
class _Scene:
    """Grids, bands and radiometry that the pair and the series generators share."""

    idx: list[int]
    ref_bands: tuple[str, ...]
    src_bands: tuple[str, ...]
    src_grid: _Grid
    ref_grid: _Grid
    fine: _Grid  # 2 m grid in phase with the reference, padded for the MTF kernel
    pad: int
    sigmas: list[float]
    to_ref: Transformer
    same_crs: bool
    mixing: np.ndarray
    gains: np.ndarray
    offsets: np.ndarray
    path: np.ndarray
    trans: np.ndarray
    sph: np.ndarray
    cloud: np.ndarray

    @property
    def nb(self) -> int:
        return len(self.idx)

    def src_world(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        """Reference-CRS coordinates of source pixel centres."""
        x, y = self.src_grid.centres(rows, cols)
        if not self.same_crs:
            x, y = self.to_ref.transform(x, y)
        return np.asarray(x), np.asarray(y)


def _scene(
    shape: tuple[int, int],
    bands: Sequence[str],
    src_crs: str | int | None,
    src_offset: tuple[float, float],
    src_resolution: float,
    ref_crs: str | int,
    origin: tuple[float, float],
) -> _Scene:
    idx = [S2_BANDS.index(b) for b in bands]
    ref_res, factor = _REF_RES, _FACTOR
    ref_crs_ = CRS.from_user_input(ref_crs)
    src_crs_ = CRS.from_user_input(src_crs) if src_crs is not None else ref_crs_
    border = 80.0  # reference margin around the source footprint, metres

    ny, nx = shape
    if src_crs_ == ref_crs_:
        x0 = origin[0] + border + src_offset[0]
        y0 = origin[1] - border - src_offset[1]
    else:
        cx = origin[0] + border + nx * src_resolution / 2
        cy = origin[1] - border - ny * src_resolution / 2
        to_src = Transformer.from_crs(ref_crs_, src_crs_, always_xy=True)
        sx, sy = to_src.transform(cx, cy)
        x0 = round(sx - nx * src_resolution / 2) + src_offset[0]
        y0 = round(sy + ny * src_resolution / 2) - src_offset[1]
    src_grid = _Grid(src_crs_, Affine(src_resolution, 0, x0, 0, -src_resolution, y0), (ny, nx))

    # Reference grid: covers the source footprint plus a margin, on 10 m lines from origin.
    to_ref = Transformer.from_crs(src_crs_, ref_crs_, always_xy=True)
    corners = (np.array([0, nx, 0, nx]), np.array([0, 0, ny, ny]))
    # affine annotates float vectors only; it maps coordinate arrays elementwise too.
    fx, fy = src_grid.transform @ corners  # type: ignore[operator]
    rx, ry = to_ref.transform(fx, fy)
    rows = math.ceil((origin[1] - min(ry) + border) / ref_res)
    cols = math.ceil((max(rx) - origin[0] + border) / ref_res)
    ref_grid = _Grid(ref_crs_, Affine(ref_res, 0, origin[0], 0, -ref_res, origin[1]), (rows, cols))

    # The reference sees the surface on a 2 m grid in phase with the 10 m grid, with enough
    # margin for the MTF kernel, blurred and sampled once per 10 m pixel.
    sigmas = [psf.sigma_from_mtf(psf.S2_MTF[b], ref_res, ref_res / factor) for b in bands]
    pad = factor * math.ceil(psf.kernel_margin(max(sigmas), factor) / factor)
    fine = _Grid(
        ref_crs_,
        Affine(
            ref_res / factor,
            0,
            origin[0] - pad * ref_res / factor,
            0,
            -ref_res / factor,
            origin[1] + pad * ref_res / factor,
        ),
        (rows * factor + 2 * pad, cols * factor + 2 * pad),
    )

    mixing = _MIXING[np.ix_(idx, idx)]
    mixing = mixing / mixing.sum(axis=1, keepdims=True)
    return _Scene(
        idx=idx,
        ref_bands=tuple(bands),
        src_bands=tuple(SRC_BANDS[i] for i in idx),
        src_grid=src_grid,
        ref_grid=ref_grid,
        fine=fine,
        pad=pad,
        sigmas=sigmas,
        to_ref=to_ref,
        same_crs=src_crs_ == ref_crs_,
        mixing=mixing,
        gains=_GAINS[idx],
        offsets=_OFFSETS[idx],
        path=_PATH[idx],
        trans=_TRANS[idx],
        sph=_SPHERICAL[idx],
        cloud=_CLOUD[idx],
    )


_COL = (slice(None), None, None)  # a per-band vector against (band, y, x)


def _src_valid(shape: tuple[int, int], nodata_border: int, rows: slice, cols: slice) -> np.ndarray:
    ny, nx = shape
    r = np.arange(rows.start, rows.stop)[:, None]
    c = np.arange(cols.start, cols.stop)[None, :]
    w = nodata_border
    if w <= 0:
        return np.ones((r.size, c.size), bool)
    edge = np.minimum(np.minimum(r, ny - 1 - r), np.minimum(c, nx - 1 - c))
    return (edge >= w) & (r + c >= 4 * w)


def _source(
    scene: _Scene,
    surface: _Surface,
    *,
    seed: int,
    toa: bool,
    shift: tuple[float, float],
    src_clouds: float,
    nodata_border: int,
    chunks: int | None,
) -> tuple[np.ndarray | da.Array, np.ndarray | da.Array]:
    """The source reflectance (band, y, x) and its unmasked clouds (y, x)."""
    s_ = scene
    col = _COL

    def src_block(rows_: slice, cols_: slice) -> np.ndarray:
        x, y = s_.src_world(rows_, cols_)
        # Source content at p shows the surface at p - shift.
        s = surface(x - shift[0], y - shift[1])[s_.idx]
        v = np.einsum("ij,j...->i...", s_.mixing, s)
        if toa:
            v = s_.path[col] + s_.trans[col] * v / (1.0 - s_.sph[col] * v)
        v = s_.gains[col] * v + s_.offsets[col]
        alpha = _cloud_opacity(seed, _S_SRC_CLOUD, x, y, src_clouds)
        v = (1 - alpha) * v + alpha * s_.cloud[col]
        r = np.arange(rows_.start, rows_.stop)[:, None]
        c = np.arange(cols_.start, cols_.stop)[None, :]
        v = v + _SRC_NOISE * _normal(seed, _S_SRC_NOISE, np.arange(s_.nb)[col], r, c)
        return np.where(_src_valid(s_.src_grid.shape, nodata_border, rows_, cols_), v, np.nan)

    def src_cloud_block(rows_: slice, cols_: slice) -> np.ndarray:
        x, y = s_.src_world(rows_, cols_)
        return (_cloud_opacity(seed, _S_SRC_CLOUD, x, y, src_clouds) > 0)[None]

    src_data = _lazy_field(s_.src_grid, s_.nb, chunks, src_block, np.float32)
    src_cloud_data = _lazy_field(s_.src_grid, 1, chunks, src_cloud_block, bool)[0]
    return src_data, src_cloud_data


def _source_truth(
    scene: _Scene,
    surface: _Surface,
    shift: tuple[float, float],
    nodata_border: int,
    chunks: int | None,
) -> np.ndarray | da.Array:
    """The S2-band surface seen by each source pixel (band, y, x), NaN at no-data."""

    def truth_block(rows_: slice, cols_: slice) -> np.ndarray:
        x, y = scene.src_world(rows_, cols_)
        s = surface(x - shift[0], y - shift[1])[scene.idx]
        return np.where(_src_valid(scene.src_grid.shape, nodata_border, rows_, cols_), s, np.nan)

    return _lazy_field(scene.src_grid, scene.nb, chunks, truth_block, np.float32)


def _reference(
    scene: _Scene, surface: _Surface, *, seed: int, ref_clouds: float, chunks: int | None
) -> tuple[np.ndarray | da.Array, np.ndarray | da.Array]:
    """The reference reflectance (band, y, x) and its masked clouds (y, x).

    ``seed`` drives the reference's own noise and clouds only; the surface carries its own.
    """
    s_ = scene
    nb, factor, col = s_.nb, _FACTOR, _COL
    rows, cols = s_.ref_grid.shape

    def fine_block(rows_: slice, cols_: slice) -> np.ndarray:
        x, y = s_.fine.centres(rows_, cols_)
        return surface(x, y)[s_.idx]

    fine_chunks = None if chunks is None else max(factor, chunks // factor * factor)
    field_ = _lazy_field(s_.fine, nb, fine_chunks, fine_block, np.float32)
    blurred = psf.degrade_array(field_, s_.sigmas, factor)
    p = s_.pad // factor
    blurred = blurred[:, p : p + rows, p : p + cols]
    if chunks is not None:
        assert isinstance(blurred, da.Array), "a chunked field stays lazy through the blur"
        blurred = blurred.rechunk((nb, chunks, chunks))

    def ref_block(rows_: slice, cols_: slice, values: np.ndarray) -> np.ndarray:
        x, y = s_.ref_grid.centres(rows_, cols_)
        r = np.arange(rows_.start, rows_.stop)[:, None]
        c = np.arange(cols_.start, cols_.stop)[None, :]
        v = values + _REF_NOISE * _normal(seed, _S_REF_NOISE, np.arange(nb)[col], r, c)
        alpha = _cloud_opacity(seed, _S_REF_CLOUD, x, y, ref_clouds)
        return (1 - alpha) * v + alpha * s_.cloud[col]

    def ref_cloud_block(rows_: slice, cols_: slice) -> np.ndarray:
        x, y = s_.ref_grid.centres(rows_, cols_)
        return _cloud_opacity(seed, _S_REF_CLOUD, x, y, ref_clouds)[None] > 0

    ref_data: np.ndarray | da.Array
    if chunks is None:
        ref_data = ref_block(slice(0, rows), slice(0, cols), blurred).astype(np.float32)
    else:

        def _ref(values, block_info=None):
            (r0, r1), (c0, c1) = block_info[0]["array-location"][1:]
            return ref_block(slice(r0, r1), slice(c0, c1), values).astype(np.float32)

        ref_data = da.map_blocks(
            _ref, blurred, dtype=np.float32, meta=np.empty((0, 0, 0), np.float32)
        )
    ref_cloud_data = _lazy_field(s_.ref_grid, 1, chunks, ref_cloud_block, bool)[0]
    return ref_data, ref_cloud_data


def _check_dtype(dtype: str) -> None:
    if dtype not in ("float32", "uint16"):
        raise ValueError(f"dtype must be 'float32' or 'uint16', got {dtype!r}")


def _product(arr: xr.DataArray, add_offset: float, dtype: str) -> xr.DataArray:
    """Reflectance as delivered: uint16 DN with scale/offset, or float32 with NaN no-data."""
    if dtype == "uint16":
        return _to_dn(arr, add_offset)
    return arr.rio.write_nodata(np.nan, encoded=False)


def _mapping(scene: _Scene, toa: bool) -> np.ndarray | None:
    if toa:
        return None
    a = np.linalg.inv(scene.mixing) / scene.gains[None, :]
    return np.concatenate([a, -(a @ scene.offsets)[:, None]], axis=1)


# --------------------------------------------------------------------------- main entry
def simulate_pair(
    shape: tuple[int, int] = (1000, 1000),
    *,
    seed: int = 0,
    bands: Sequence[str] = S2_BANDS,
    toa: bool = False,
    shift: tuple[float, float] = (0.0, 0.0),
    src_clouds: float = 0.0,
    ref_clouds: float = 0.0,
    nodata_border: int = 0,
    src_crs: str | int | None = None,
    src_offset: tuple[float, float] = (0.0, 0.0),
    src_resolution: float = 2.0,
    dtype: str = "float32",
    chunks: int | None = None,
    ref_crs: str | int = "EPSG:32631",
    origin: tuple[float, float] = (500000.0, 4800000.0),
    without: Sequence[str] = (),
) -> SimulatedPair:
    """Simulate a Pleiades-like source and a Sentinel-2-like reference of the same place.

    Parameters
    ----------
    shape : (int, int)
        Source size (rows, columns) in source pixels.
    seed : int
        Everything is a deterministic function of the seed.
    bands : sequence of str
        S2 bands to simulate, a subset of ``("B2", "B3", "B4", "B8")``; the source gets
        the matching Pleiades bands (``B0``..``B3``).
    toa : bool
        Source at top of atmosphere (non-linear path radiance / spherical albedo terms).
    shift : (float, float)
        Displacement of the source content relative to the reference, metres east and
        north (positive east, north).
    src_clouds : float
        Approximate fraction of the scene under unmasked source clouds.
    ref_clouds : float
        Approximate fraction of the scene under reference clouds (returned as ``mask``).
    nodata_border : int
        Width in source pixels of a no-data border, with a cut corner, around the source.
    src_crs : str or int, optional
        CRS of the source grid; defaults to the reference CRS.
    src_offset : (float, float)
        Offset in metres (east, south) of the source origin from the reference grid lines,
        so the source grid is out of phase with the reference.
    src_resolution : float
        Source pixel size in metres (2 for Pleiades).
    dtype : {"float32", "uint16"}
        ``uint16`` returns integer DN with ``scale_factor``/``add_offset`` attributes and
        nodata 0, like real products.
    chunks : int, optional
        Dask chunk size (pixels); None computes NumPy arrays eagerly.
    ref_crs : str or int
        CRS of the reference.
    origin : (float, float)
        Upper-left corner of the reference grid in ``ref_crs``.
    without : sequence of str
        Land covers to leave out of the scene, among :data:`COVERS` (``"water"``,
        ``"bright_roof"``..., ``"roof"`` for every roof kind): a parcel of a class left out
        takes another class (drawn among those kept), a building with a roof left out is
        not built (its ground shows), roads left out are not drawn. Everything else is the
        same scene, value for value: where ``truth.reflectance`` of a pair with and without
        them differ is exactly where the covers left out lie (the known truth for
        applicability tests). The default leaves the scene untouched.

    Returns
    -------
    SimulatedPair
        ``src`` (band, y, x), ``ref`` (band, y, x), ``mask`` (y, x) on the reference
        grid, True = cloud, and ``truth``.

    Examples
    --------
    >>> pair = simulate_pair((200, 200), seed=1)
    >>> pair.src.shape, pair.ref.shape
    ((4, 200, 200), (4, 56, 56))

    The same scene without water: only the water parcels change.

    >>> dry = simulate_pair((200, 200), seed=1, without=("water",))
    >>> changed = (dry.truth.reflectance != pair.truth.reflectance).any("band")
    >>> water = (pair.truth.reflectance.sel(band="B8") < 0.03)  # water's NIR is 0.02
    >>> bool((changed == water).all()), float(changed.mean()) > 0
    (True, True)
    """
    _check_dtype(dtype)
    left_out = _without(without)
    scene = _scene(shape, bands, src_crs, src_offset, src_resolution, ref_crs, origin)
    surface = functools.partial(_surface, seed, without=left_out or None)
    src_data, src_cloud_data = _source(
        scene,
        surface,
        seed=seed,
        toa=toa,
        shift=shift,
        src_clouds=src_clouds,
        nodata_border=nodata_border,
        chunks=chunks,
    )
    truth_data = _source_truth(scene, surface, shift, nodata_border, chunks)
    ref_data, ref_cloud_data = _reference(
        scene, surface, seed=seed, ref_clouds=ref_clouds, chunks=chunks
    )

    src = _product(_dataarray(src_data, scene.src_grid, scene.src_bands, "src"), 0.0, dtype)
    ref = _dataarray(ref_data, scene.ref_grid, scene.ref_bands, "ref")
    ref = _product(ref, _REF_ADD_OFFSET, dtype)
    mask = _dataarray(ref_cloud_data, scene.ref_grid, None, "cloud_mask")
    truth = Truth(
        reflectance=_dataarray(truth_data, scene.src_grid, scene.ref_bands, "truth"),
        mapping=_mapping(scene, toa),
        shift=(float(shift[0]), float(shift[1])),
        src_clouds=_dataarray(src_cloud_data, scene.src_grid, None, "src_clouds"),
        ref_clouds=mask,
        src_bands=scene.src_bands,
        ref_bands=scene.ref_bands,
    )
    return SimulatedPair(src=src, ref=ref, mask=mask, truth=truth)


def simulate_series(
    shape: tuple[int, int] = (1000, 1000),
    *,
    seed: int = 0,
    src_date: str | np.datetime64 | datetime.date = "2024-06-15",
    days: Sequence[int] = (-10, -4, -1, 3, 8),
    ref_clouds: float | Sequence[float] = 0.0,
    harvest_day: int | None = None,
    harvest_fraction: float = 0.15,
    bands: Sequence[str] = S2_BANDS,
    toa: bool = False,
    shift: tuple[float, float] = (0.0, 0.0),
    src_clouds: float = 0.0,
    nodata_border: int = 0,
    src_crs: str | int | None = None,
    src_offset: tuple[float, float] = (0.0, 0.0),
    src_resolution: float = 2.0,
    dtype: str = "float32",
    chunks: int | None = None,
    ref_crs: str | int = "EPSG:32631",
    origin: tuple[float, float] = (500000.0, 4800000.0),
    without: Sequence[str] = (),
) -> SimulatedSeries:
    """Simulate a Pleiades-like source and Sentinel-2-like references at several dates.

    The place and the sensors are those of :func:`simulate_pair` with the same options;
    the surface changes with time. Crop parcels green up along a logistic curve whose
    middle and pace are drawn per parcel (red falls, NIR rises over a few weeks; grass and
    forest move a little, other classes not at all), and with ``harvest_day`` a fraction
    of them turn to bare soil. At the source date the surface is exactly
    :func:`simulate_pair`'s (with the harvest already done when ``harvest_day < 0``), and
    a reference at day 0 is :func:`simulate_pair`'s reference, its noise and clouds
    included. Each other date has its own noise and cloud field.

    Parameters
    ----------
    shape : (int, int)
        Source size (rows, columns) in source pixels.
    seed : int
        Everything is a deterministic function of the seed, the position and the date.
    src_date : str, numpy.datetime64 or datetime.date
        The source acquisition date.
    days : sequence of int
        Reference dates in days from ``src_date`` (0 allowed), distinct; returned in
        ascending order.
    ref_clouds : float or sequence of float
        Approximate fraction of the scene under masked reference clouds: one value for all
        dates, or one per date in the order of ``days``.
    harvest_day : int, optional
        Harvest a fraction of the crop parcels between the source date and this day: bare
        soil at dates ``>= harvest_day`` when positive; when negative, bare at the source
        date and at dates ``> harvest_day``, still crop at dates ``<= harvest_day``. None
        (default): no harvest. 0 is refused (the harvest must fall between two dates).
    harvest_fraction : float
        Fraction of the crop parcels harvested, in [0, 1].
    bands, toa, shift, src_clouds, nodata_border, src_crs, src_offset, src_resolution, \
dtype, chunks, ref_crs, origin, without
        As for :func:`simulate_pair`. With ``chunks``, every array is Dask-backed and lazy
        (one date per chunk along ``time``), and equal to the unchunked one.

    Returns
    -------
    SimulatedSeries
        ``src``, ``ref`` (time, band, y, x), ``mask`` (time, y, x), ``truth`` at the
        source date, ``truth_at`` every reference date, and where the harvest changed the
        surface: ``changed`` (source grid) and ``changed_ref`` (reference grid, per date).

    Raises
    ------
    ValueError
        For empty, repeated or fractional ``days``, a ``ref_clouds`` sequence of the
        wrong length, ``harvest_day=0``, a ``harvest_fraction`` outside [0, 1], an unknown
        ``dtype`` or an unreadable ``src_date``.

    Examples
    --------
    >>> series = simulate_series((100, 100), seed=1, days=(4, -6), ref_clouds=(0.0, 0.3))
    >>> series.ref.sizes["time"], series.days
    (2, (-6, 4))
    >>> series.mask.any(("y", "x")).values  # the clouds follow their date
    array([ True, False])

    The surface moved between the dates: crops grew, their NIR rose.

    >>> nir = series.truth_at.sel(band="B8") - series.truth.reflectance.sel(band="B8")
    >>> bool(nir[0].min() < -0.02), bool(nir[1].max() > 0.02)  # before, after the source
    (True, True)
    """
    _check_dtype(dtype)
    order, clouds = _series_dates(days, ref_clouds)
    if harvest_day is not None and harvest_day == 0:
        raise ValueError(
            "harvest_day=0 puts the harvest on the source date itself: give the day after "
            "which the parcels are bare (> 0), or before which they were crop (< 0)"
        )
    if not 0.0 <= harvest_fraction <= 1.0:
        raise ValueError(f"harvest_fraction must be in [0, 1], got {harvest_fraction}")
    try:
        t0 = np.asarray(src_date, dtype="datetime64[ns]")[()]
    except (TypeError, ValueError) as err:
        raise ValueError(f"src_date {src_date!r} is not a date; give e.g. '2024-06-15'") from err
    dates = t0 + np.array(order, dtype=np.int64) * np.timedelta64(1, "D")

    left_out = _without(without)
    scene = _scene(shape, bands, src_crs, src_offset, src_resolution, ref_crs, origin)
    season = _Season(harvest_day, harvest_fraction)

    def surface_on(day: int) -> _Surface:
        return functools.partial(_surface, seed, season=season, day=day, without=left_out or None)

    src_data, src_cloud_data = _source(
        scene,
        surface_on(0),
        seed=seed,
        toa=toa,
        shift=shift,
        src_clouds=src_clouds,
        nodata_border=nodata_border,
        chunks=chunks,
    )
    truth_data = _source_truth(scene, surface_on(0), shift, nodata_border, chunks)

    refs, masks, truths = [], [], []
    for day, fraction in zip(order, clouds, strict=True):
        ref_data, cloud_data = _reference(
            scene, surface_on(day), seed=_date_seed(seed, day), ref_clouds=fraction, chunks=chunks
        )
        ref_d = _dataarray(ref_data, scene.ref_grid, scene.ref_bands, "ref")
        refs.append(_product(ref_d, _REF_ADD_OFFSET, dtype))
        masks.append(_dataarray(cloud_data, scene.ref_grid, None, "cloud_mask"))
        at = (
            truth_data
            if day == 0
            else _source_truth(scene, surface_on(day), shift, nodata_border, chunks)
        )
        truths.append(_dataarray(at, scene.src_grid, scene.ref_bands, "truth"))

    def over_time(arrays: list[xr.DataArray]) -> xr.DataArray:
        return xr.concat(arrays, dim="time").assign_coords(time=dates)

    # A date shows the harvest's change iff it lies on the other side of it from the source.
    across = [season.bare(day) != season.bare(0) for day in order]
    changed_src, changed_fine = _harvest_fields(
        scene, seed, season, shift, nodata_border, chunks, any(across), left_out or None
    )

    src = _product(_dataarray(src_data, scene.src_grid, scene.src_bands, "src"), 0.0, dtype)
    mask = over_time(masks)
    truth_now = _dataarray(truth_data, scene.src_grid, scene.ref_bands, "truth")
    truth = Truth(
        reflectance=truth_now.assign_coords(time=t0),
        mapping=_mapping(scene, toa),
        shift=(float(shift[0]), float(shift[1])),
        src_clouds=_dataarray(src_cloud_data, scene.src_grid, None, "src_clouds"),
        ref_clouds=mask,
        src_bands=scene.src_bands,
        ref_bands=scene.ref_bands,
    )
    changed_ref = _dataarray(changed_fine, scene.ref_grid, None, "changed")
    return SimulatedSeries(
        src=src.assign_coords(time=t0),
        ref=over_time(refs),
        mask=mask,
        truth=truth,
        truth_at=over_time(truths),
        changed=_dataarray(changed_src, scene.src_grid, None, "changed"),
        changed_ref=over_time([changed_ref & a for a in across]),
    )


def _series_dates(
    days: Sequence[int], ref_clouds: float | Sequence[float]
) -> tuple[list[int], list[float]]:
    """The reference days in ascending order, and the cloud fraction of each."""
    days = list(days)
    if not days:
        raise ValueError("days is empty: give at least one reference date, e.g. days=(0,)")
    whole = [int(d) for d in days]
    if whole != days:
        raise ValueError(f"days must be whole numbers of days, got {days}")
    if len(set(whole)) != len(whole):
        raise ValueError(f"days must be distinct, got {days}")
    # A NumPy scalar is a fraction too; anything with a length is one per date.
    per_date = np.ravel(np.asarray(ref_clouds, dtype=float)).tolist()
    if np.ndim(ref_clouds) == 0:
        clouds = per_date * len(whole)
    else:
        clouds = per_date
        if len(clouds) != len(whole):
            raise ValueError(
                f"ref_clouds has {len(clouds)} values for {len(whole)} days: give one per "
                "date, in the order of days, or a single fraction for all"
            )
    pairs = sorted(zip(whole, clouds, strict=True))
    return [d for d, _ in pairs], [c for _, c in pairs]


def _date_seed(seed: int, day: int) -> int:
    # Noise and clouds of each reference date come from their own seed; the source date's
    # reference keeps simulate_pair's, so a day-0 reference is simulate_pair's reference.
    return seed if day == 0 else int(_hash(seed, _S_DATE, day))


def _harvest_fields(
    scene: _Scene,
    seed: int,
    season: _Season,
    shift: tuple[float, float],
    nodata_border: int,
    chunks: int | None,
    visible: bool,
    without: _Without | None = None,
) -> tuple[np.ndarray | da.Array, np.ndarray | da.Array]:
    """Harvested parcels (y, x) on the source grid and, by any overlap, the reference grid.

    Where no reference date falls across the harvest (``visible`` False) nothing changed
    and both are all False, without evaluating the surface.
    """
    factor = _FACTOR

    def on_src(rows_: slice, cols_: slice) -> np.ndarray:
        x, y = scene.src_world(rows_, cols_)
        harvested = _surface_layers(seed, x - shift[0], y - shift[1], season, 0.0, without)[1]
        assert harvested is not None, "a season always reports its harvest"
        valid = _src_valid(scene.src_grid.shape, nodata_border, rows_, cols_)
        return (harvested & valid & visible)[None]

    # The 2 m reference sub-grid, in phase with the 10 m pixels (the fine grid unpadded).
    t = scene.ref_grid.transform
    sub = _Grid(
        scene.ref_grid.crs,
        Affine(t.a / factor, 0, t.c, 0, t.e / factor, t.f),
        (scene.ref_grid.shape[0] * factor, scene.ref_grid.shape[1] * factor),
    )

    def on_sub(rows_: slice, cols_: slice) -> np.ndarray:
        x, y = sub.centres(rows_, cols_)
        harvested = _surface_layers(seed, x, y, season, 0.0, without)[1]
        assert harvested is not None, "a season always reports its harvest"
        return (harvested & visible)[None]

    def on_ref(rows_: slice, cols_: slice) -> np.ndarray:
        h, w = rows_.stop - rows_.start, cols_.stop - cols_.start
        if not visible:
            return np.zeros((1, h, w), bool)
        fine = _by_slabs(
            on_sub,
            slice(rows_.start * factor, rows_.stop * factor),
            slice(cols_.start * factor, cols_.stop * factor),
            1,
            bool,
        )
        return np.asarray(fine.reshape(1, h, factor, w, factor).any(axis=(2, 4)))

    def on_src_or_none(rows_: slice, cols_: slice) -> np.ndarray:
        if not visible:
            return np.zeros((1, rows_.stop - rows_.start, cols_.stop - cols_.start), bool)
        return on_src(rows_, cols_)

    src = _lazy_field(scene.src_grid, 1, chunks, on_src_or_none, bool)[0]
    ref = _lazy_field(scene.ref_grid, 1, chunks, on_ref, bool)[0]
    return src, ref


def _to_dn(arr: xr.DataArray, add_offset: float) -> xr.DataArray:
    """Encode reflectance as uint16 DN like a real product: 0 is nodata."""

    def encode(v):
        dn = np.rint((v - add_offset) / _SCALE)
        return np.where(np.isfinite(v), np.clip(dn, 1, 65535), 0).astype(np.uint16)

    data = arr.data
    if isinstance(data, da.Array):
        dn = da.map_blocks(encode, data, dtype=np.uint16, meta=np.empty((0, 0, 0), np.uint16))
    else:
        dn = encode(data)
    out = arr.copy(data=dn)
    out.attrs.update(scale_factor=_SCALE, add_offset=add_offset)
    return out.rio.write_nodata(0, encoded=False)
