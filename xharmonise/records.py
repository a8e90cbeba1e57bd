"""Records a fit keeps: the pair's common grid and the measured shift.

Plain, immutable values with their JSON forms, so that the fitted model
(:mod:`xharmonise.harmoniser`) can hold and store them without importing the modules that
compute them (:mod:`xharmonise.grid`, :mod:`xharmonise.coregister`), which re-export them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from affine import Affine
from odc.geo.geobox import GeoBox

from xharmonise.errors import InputValueError

__all__ = ["PairGrid", "ShiftEstimate"]


def _require(d: Any, keys: Iterable[str], what: str) -> None:
    """Refuse a JSON description that is not a dict or lacks one of ``keys``."""
    if not isinstance(d, dict):
        raise InputValueError(f"{what} is {d!r}, not a dict: give the output of its to_json")
    missing = [k for k in keys if k not in d]
    if missing:
        raise InputValueError(
            f"{what} lacks {', '.join(map(repr, missing))}: give the complete output of its "
            "to_json/to_dict"
        )


_GRID_KEYS = (
    "factor",
    "crs",
    "ref_transform",
    "ref_shape",
    "ref_rows",
    "ref_cols",
    "src_resolution",
)


@dataclass(frozen=True)
class PairGrid:
    """The common grid of a source / reference pair.

    Attributes
    ----------
    factor : int
        Reference pixels cover ``factor x factor`` source-grid pixels.
    ref : GeoBox
        The reference grid cropped to the overlap (whole reference pixels).
    src : GeoBox
        The phase-aligned source grid: ``ref`` at ``factor`` times finer resolution.
    ref_rows, ref_cols : slice
        Where ``ref`` lies in the reference array.
    src_resolution : float
        The source's own pixel size in reference CRS units.

    Examples
    --------
    >>> from xharmonise.grid import pair_grid
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((100, 100))
    >>> g = pair_grid(pair.src, pair.ref)
    >>> PairGrid.from_json(g.to_json()) == g
    True
    """

    factor: int
    ref: GeoBox
    src: GeoBox
    ref_rows: slice
    ref_cols: slice
    src_resolution: float

    def to_json(self) -> dict[str, Any]:
        """JSON-able description (CRS as WKT, transforms as 6 numbers, slices as
        ``[start, stop]``); :meth:`from_json` reads it back."""
        # PairGrid's grids come from georeferenced inputs: they always have a CRS.
        assert self.ref.crs is not None, "a PairGrid's reference grid has a CRS"
        return {
            "factor": self.factor,
            "crs": self.ref.crs.to_wkt(),
            "ref_transform": list(self.ref.affine)[:6],
            "ref_shape": list(self.ref.shape),
            "ref_rows": [self.ref_rows.start, self.ref_rows.stop],
            "ref_cols": [self.ref_cols.start, self.ref_cols.stop],
            "src_resolution": self.src_resolution,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PairGrid:
        """Rebuild a grid from :meth:`to_json`'s output.

        The source grid is the reference grid ``factor`` times finer, as
        :func:`xharmonise.grid.pair_grid` makes it.

        Raises
        ------
        InputValueError
            ``d`` lacks a field or holds values that make no grid.
        """
        _require(d, _GRID_KEYS, "the grid description")
        try:
            factor = d["factor"]
            if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
                raise ValueError(f"factor {factor!r} is not a positive integer")
            rows, cols = (int(v) for v in d["ref_shape"])
            ref = GeoBox((rows, cols), Affine(*map(float, d["ref_transform"])), d["crs"])
            src = GeoBox(
                (rows * factor, cols * factor), ref.affine @ Affine.scale(1.0 / factor), ref.crs
            )
            (r0, r1), (c0, c1) = d["ref_rows"], d["ref_cols"]
            return cls(
                factor=factor,
                ref=ref,
                src=src,
                ref_rows=slice(int(r0), int(r1)),
                ref_cols=slice(int(c0), int(c1)),
                src_resolution=float(d["src_resolution"]),
            )
        except (TypeError, ValueError) as err:
            raise InputValueError(
                f"the grid description {d!r} makes no grid ({err}): give the output of "
                "PairGrid.to_json"
            ) from None


_SHIFT_KEYS = ("east", "north", "pixel_size", "confidence", "std_error", "bands", "windows")


@dataclass(frozen=True, eq=False)
class ShiftEstimate:
    """A measured shift of the source relative to the reference, with its evidence.

    Attributes
    ----------
    east, north : float
        Displacement of the source content relative to the reference, CRS units (metres),
        east and north positive.
    pixel_size : float
        Reference pixel size, CRS units.
    confidence : float
        Share (0-1) of the measured windows that agree with the result (within three
        robust standard deviations, and never less than 0.1 reference pixel): near 1 on a
        clean pair, lower when clouds or changes make windows disagree.
    std_error : float
        Standard error of the shift (radial), CRS units.
    bands : dict
        Per-band shift ``{band: (east, north)}`` in CRS units, averaged over the windows
        that agree.
    windows : pandas.DataFrame
        One row per window examined: its position (``row``, ``col`` in the overlap's
        reference grid; ``x``, ``y`` of its centre), ``status`` (``inlier``, ``outlier``,
        ``nodata``, ``cloud``, ``flat``, ``beyond_max_shift``), its shift (``east``,
        ``north`` in CRS units; ``east_px``, ``north_px`` in reference pixels; per band
        ``east_<band>``, ``north_<band>``), ``correlation`` (mean over bands of the
        Pearson correlation of the aligned images) and ``iterations``.

    Examples
    --------
    >>> from xharmonise import estimate_shift
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((600, 600), shift=(-3.0, 2.0), seed=2)
    >>> est = estimate_shift(pair.src, pair.ref)
    >>> round(est.east_px, 1), round(est.north_px, 1)
    (-0.3, 0.2)
    >>> ShiftEstimate.from_dict(est.to_dict()).east == est.east
    True
    >>> sorted(est.windows["status"].unique())
    ['inlier']
    """

    east: float
    north: float
    pixel_size: float
    confidence: float
    std_error: float
    bands: dict[str, tuple[float, float]]
    windows: pd.DataFrame = field(repr=False)

    @property
    def east_px(self) -> float:
        """East shift in reference pixels."""
        return self.east / self.pixel_size

    @property
    def north_px(self) -> float:
        """North shift in reference pixels."""
        return self.north / self.pixel_size

    @property
    def n_windows(self) -> int:
        """Number of windows the result rests on (the inliers)."""
        return int((self.windows["status"] == "inlier").sum())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description; :meth:`from_dict` reads it back.

        Examples
        --------
        >>> import json, xharmonise
        >>> from xharmonise.simulate import simulate_pair
        >>> pair = simulate_pair((600, 600), seed=0, shift=(4.0, -2.0))
        >>> est = xharmonise.estimate_shift(pair.src, pair.ref)
        >>> sorted(json.loads(json.dumps(est.to_dict())))[:3]
        ['bands', 'confidence', 'east']
        """
        return {
            "east": float(self.east),
            "north": float(self.north),
            "pixel_size": float(self.pixel_size),
            "confidence": float(self.confidence),
            "std_error": float(self.std_error),
            "bands": {b: [float(e), float(n)] for b, (e, n) in self.bands.items()},
            "windows": {
                k: [v.item() if isinstance(v, np.generic) else v for v in values]
                for k, values in self.windows.to_dict(orient="list").items()
            },
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShiftEstimate:
        """Rebuild an estimate from :meth:`to_dict`'s output.

        Raises
        ------
        InputValueError
            ``d`` lacks a field or holds values that make no estimate.

        Examples
        --------
        >>> import xharmonise
        >>> from xharmonise.simulate import simulate_pair
        >>> pair = simulate_pair((600, 600), seed=0, shift=(4.0, -2.0))
        >>> est = xharmonise.estimate_shift(pair.src, pair.ref)
        >>> back = ShiftEstimate.from_dict(est.to_dict())
        >>> (back.east, back.north) == (est.east, est.north)
        True
        """
        _require(d, _SHIFT_KEYS, "the shift estimate description")
        try:
            return cls(
                east=float(d["east"]),
                north=float(d["north"]),
                pixel_size=float(d["pixel_size"]),
                confidence=float(d["confidence"]),
                std_error=float(d["std_error"]),
                bands={b: (float(e), float(n)) for b, (e, n) in d["bands"].items()},
                windows=pd.DataFrame(d["windows"]),
            )
        except (AttributeError, TypeError, ValueError) as err:
            raise InputValueError(
                f"the shift estimate description makes no estimate ({err}): give the output "
                "of ShiftEstimate.to_dict"
            ) from None

    def __repr__(self) -> str:
        return (
            f"<ShiftEstimate east={self.east:+.3f} north={self.north:+.3f} "
            f"({self.east_px:+.3f}, {self.north_px:+.3f} px of {self.pixel_size:g}), "
            f"std error {self.std_error:.3f}, {self.n_windows}/{len(self.windows)} windows, "
            f"confidence {self.confidence:.2f}>"
        )
