"""The fitted model and its provenance."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["Harmoniser"]


@dataclass
class Harmoniser:
    """A mapping from source reflectance to reference-consistent reflectance.

    Built by :func:`xharmonise.fit`; apply it with :func:`xharmonise.predict`.

    Attributes
    ----------
    method : str
        ``"linear"``, ``"calibnet"``, ``"convcalibnet"`` or ``"bcnet"``.
    src_bands, ref_bands : list of str
        Paired band names: source band ``src_bands[i]`` maps to ``ref_bands[i]``.
    factor : int
        Source pixels per reference pixel along each axis, on the training grid.
    sigmas : list of float
        Reference MTF Gaussian sigma per band, in source-grid pixels.
    src_scale, src_offset : float
        Source reflectance = DN * scale + offset as used in training.
    linear : numpy.ndarray
        (band, band + 1) linear baseline ``[A | b]``, always fitted as the reference.
    metrics : xarray.DataArray
        Test-split metrics (band, metric, stage) for stages initial, linear and model.
    history : dict
        Training curves (empty for ``linear``).
    grid : dict
        The training grid (CRS, transform, factor).
    patches : dict
        Patch counts: total, valid, no-data, cloudy, train, test.
    variance : bool
        Whether the model predicts a per-pixel variance.
    net : torch.nn.Module or None
        The trained network (None for ``linear``).
    """

    method: str
    src_bands: list[str]
    ref_bands: list[str]
    factor: int
    sigmas: list[float]
    src_scale: float
    src_offset: float
    linear: np.ndarray
    metrics: xr.DataArray
    history: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, Any] = field(default_factory=dict)
    patches: dict[str, int] = field(default_factory=dict)
    variance: bool = False
    net: Any = None

    @property
    def n_bands(self) -> int:
        """Number of paired bands."""
        return len(self.ref_bands)

    def __repr__(self) -> str:
        rmse = self.metrics.sel(metric="rmse").mean("band")
        stages = ", ".join(f"{s}={float(rmse.sel(stage=s)):.4f}" for s in rmse["stage"].values)
        return (
            f"<Harmoniser {self.method}{' +variance' if self.variance else ''}: "
            f"{self.src_bands} -> {self.ref_bands}, x{self.factor}, "
            f"{self.patches.get('train', 0)} train / {self.patches.get('test', 0)} test "
            f"patches, mean test RMSE {stages}>"
        )
