"""Figures of a fitted model and its self-contained HTML report.

The figures follow Michel & Inglada (2021): density scatter plots of the test split
against the reference (their Figures 4, 12, 15, 17), training curves against the linear
baseline (5, 6, 9), per-band metric bars (3, 11, 14, 16), BCNet's learned filters (10),
the reliability diagram of σ² (observed against expected coverage, before and after
calibration), and, given an image, a before/after colour crop, the predictive variance
map and the applicability map.

Every figure function returns a :class:`matplotlib.figure.Figure` built without pyplot,
so nothing leaks into pyplot's global state and no GUI backend is ever selected; the
figures render with Agg. :func:`report` writes them into one HTML file that opens offline
(images as ``data:`` URIs, inline CSS, no script, font or link) and, for reuse, as PNG
files in a sibling ``<stem>_files`` folder.
"""

from xharmonise.plot.crops import rgb_crop, variance_map
from xharmonise.plot.figures import (
    filters,
    loss_curves,
    metric_bars,
    reliability,
    scatter_density,
)
from xharmonise.plot.htmlreport import report, report_destination

__all__ = [
    "filters",
    "loss_curves",
    "metric_bars",
    "reliability",
    "report",
    "report_destination",
    "rgb_crop",
    "scatter_density",
    "variance_map",
]
