"""The main job: a realistic pair, BCNet with the variance head, a Zarr store and a report.

``xharmonise demo`` (what ``./ci/demo.sh`` runs) simulates a top-of-atmosphere Pleiades /
Sentinel-2 pair with what makes real pairs hard -- a non-linear atmosphere, source clouds
that no mask flags, a mis-registration of a pixel or so, masked reference clouds and a
no-data border -- writes it as GeoTIFFs and then works from those files as a user would
(``--src``/``--ref`` run the same steps on real rasters): fit BCNet with the variance
head, print the metrics, predict at 2 m into ``harmonised.zarr``, save the model, and
write ``report.html``. On simulated data it also scores the 2 m result against the truth
the simulator knows: reflectance error, the learned shift, and how well the variance
finds the unmasked clouds.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xharmonise import arguments, checks
from xharmonise.errors import InputValueError
from xharmonise.models.registry import MethodName
from xharmonise.models.registry import method as method_spec
from xharmonise.runfiles import format_metrics, open_mask, open_raster, shift_estimates

if TYPE_CHECKING:
    import xarray as xr

    from xharmonise.harmoniser import Harmoniser
    from xharmonise.simulate import SimulatedPair

__all__ = ["SCENARIO", "DemoResult", "run"]

#: The simulated scene: what the paper shows BCNet + variance head copes with.
SCENARIO: dict[str, Any] = {
    "toa": True,  # non-linear TOA -> surface relation: a linear fit is not enough
    "src_clouds": 0.05,  # unmasked source clouds: only the variance head copes
    # Masked (the L2A cloud mask): every patch they touch is left out, and small scattered
    # clouds touch many, 3 % of the area about half the 320 m patches.
    "ref_clouds": 0.03,
    "shift": (3.0, -2.0),  # metres east, north: 1.5 and 1 source pixels, BCNet's filters
    "nodata_border": 40,
}
# Pixels scored against the truth at most: a strided sample keeps memory bounded for
# large --size while 4e6 pixels are more than enough for medians and percentiles.
_MAX_SCORED = 4_000_000


@dataclass
class DemoResult:
    """What :func:`run` produced.

    Attributes
    ----------
    model : Harmoniser
        The fitted model.
    store, model_path, report : pathlib.Path
        The written Zarr store, model file and HTML report.
    seconds : dict of str to float
        Wall time per step and ``total``.
    truth : dict of str to float
        Scores against the simulator's truth (empty for real inputs): 2 m RMSE over clear
        pixels for ``rmse_initial``, ``rmse_linear``, ``rmse_model``; ``shift_error_m``;
        ``variance_ratio`` (median variance in source clouds / clear) and
        ``cloud_recall`` (cloud pixels above the clear pixels' 99th variance percentile).
    """

    model: Harmoniser
    store: Path
    model_path: Path
    report: Path
    seconds: dict[str, float] = field(default_factory=dict)
    truth: dict[str, float] = field(default_factory=dict)


def run(
    out: str | Path = "demo_out",
    *,
    src: xr.DataArray | None = None,
    ref: xr.DataArray | None = None,
    mask: xr.DataArray | None = None,
    size: int = 2000,
    method: MethodName = "bcnet",
    variance: bool | None = None,
    iterations: int | None = None,
    patch_size: int = 32,
    seed: int = 0,
    chunks: int = 1024,
    progress: bool = True,
    echo: Callable[..., None] = print,
) -> DemoResult:
    """Run the demo end to end and write its outputs into ``out``.

    Parameters
    ----------
    out : str or pathlib.Path
        Output folder; its ``harmonised.zarr``, ``model.safetensors``, ``report.html``
        (and ``inputs/`` for simulated pairs) are replaced on every run.
    src, ref, mask : xarray.DataArray, optional
        Real inputs (``mask`` on ``ref``'s grid, True = cloud); by default a pair of
        ``size`` x ``size`` source pixels is simulated with :data:`SCENARIO`.
    size : int
        Simulated source side in pixels (2 m); the reference is ``size / 5`` pixels.
    method : str
        Any :func:`xharmonise.fit` method.
    variance : bool, optional
        Train the variance head; by default when the method offers one (not ``linear``).
    iterations : int, optional
        Training budget; by default the library's (the CPU budget without a GPU).
    patch_size : int
        Patch side in reference pixels (the paper's 32; smaller for tiny scenes).
    seed : int
        Seed of the simulation, the split and training.
    chunks : int
        Dask chunk side in source pixels (and Zarr shard side).
    progress : bool
        Progress bars for training and writing.
    echo : callable
        Where the step-by-step log goes (``print`` by default).

    Returns
    -------
    DemoResult

    Raises
    ------
    InputValueError
        Only one of ``src`` and ``ref`` given.
    HarmoniseError
        Whatever :func:`xharmonise.fit`, :func:`xharmonise.predict` and
        :func:`xharmonise.to_zarr` refuse: every error the demo raises on bad input is
        one.

    Examples
    --------
    >>> result = run("/tmp/xh-demo-doc", size=400, method="linear", progress=False,
    ...              echo=lambda *a: None)  # doctest: +SKIP
    >>> sorted(p.name for p in result.store.parent.iterdir())  # doctest: +SKIP
    ['harmonised.zarr', 'inputs', 'model.safetensors', 'report.html']
    """
    if (src is None) != (ref is None):
        raise InputValueError("give both src and ref, or neither to simulate a pair")
    if variance is None:
        variance = method_spec(method).offers_variance
    # Every option is refused here, before minutes of simulating and writing inputs.
    arguments.fit_options(
        method=method,
        variance=variance,
        iterations=iterations,
        batch_size=None,
        patch_size=patch_size,
        test_fraction=0.1,
        max_patches=None,
        seed=seed,
        device="auto",
        progress=progress,
        coregister=False,
    )
    checks.integer(size, "size", minimum=1)
    checks.integer(chunks, "chunks", minimum=1)
    import dask

    import xharmonise
    from xharmonise.plot import report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    start = clock = time.perf_counter()

    def lap(name: str) -> float:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = now - clock
        clock = now
        return seconds[name]

    pair = None
    with dask.config.set(scheduler="threads"):
        if src is None or ref is None:  # both, given the check above
            pair = _simulate(size, seed=seed, chunks=chunks)
            paths = pair.to_geotiff(out / "inputs")
            # From here on the demo works from the files, exactly as on real rasters.
            src = open_raster(str(paths["src"]), what="the source", chunks=chunks)
            ref = open_raster(str(paths["ref"]), what="the reference", chunks=chunks)
            mask = open_mask(str(paths["mask"]), chunks=chunks)
            echo(_describe_pair(pair, size, lap("simulate")))
            echo(f"inputs: {paths['src']}, {paths['ref']}, {paths['mask']}")
        else:
            lap("simulate")
            echo(f"inputs: source {tuple(src.shape)}, reference {tuple(ref.shape)}")

        echo(f"fitting {method}{' with the variance head' if variance else ''} …")
        model = xharmonise.fit(
            src,
            ref,
            method=method,
            variance=variance,
            mask=mask,
            iterations=iterations,
            patch_size=patch_size,
            seed=seed,
            progress=progress,
        )
        echo(f"fitted in {lap('fit'):.1f} s: {model}")
        echo(format_metrics(model))
        model_path = Path(model.save(out / "model.safetensors"))  # a local file: a Path

        store = out / "harmonised.zarr"
        prediction = xharmonise.predict(src, model)
        # The demo's own output, replaced on every run.
        xharmonise.to_zarr(prediction, store, mode="w", progress=progress)
        names = ", ".join(map(str, prediction.data_vars))
        echo(f"wrote {store} ({names}) in {lap('predict'):.1f} s")

        truth: dict[str, float] = {}
        # Scores and report read the store back: nothing is predicted twice.
        written = _open_store(store)
        if pair is not None:
            truth = _score_against_truth(pair, src, written, model)
            echo(_describe_truth(truth, pair, model), f"({lap('score'):.1f} s)")

        title = "xharmonise demo" + (" (simulated pair)" if pair is not None else "")
        crop = _cloudy_window(pair) if pair is not None else None
        report_path = Path(
            report(model, out / "report.html", src=src, prediction=written, crop=crop, title=title)
        )
        lap("report")
    seconds["total"] = time.perf_counter() - start
    echo(f"wrote {report_path} and {model_path}; total {seconds['total']:.1f} s")
    return DemoResult(
        model=model,
        store=store,
        model_path=model_path,
        report=report_path,
        seconds=seconds,
        truth=truth,
    )


def _simulate(size: int, *, seed: int, chunks: int) -> SimulatedPair:
    from xharmonise.simulate import simulate_pair

    return simulate_pair((size, size), seed=seed, chunks=chunks, **SCENARIO)


def _describe_pair(pair: SimulatedPair, size: int, took: float) -> str:
    east, north = pair.truth.shift
    return (
        f"simulated a top-of-atmosphere pair in {took:.1f} s: source {size} x {size} px at "
        f"2 m, reference {pair.ref.sizes['y']} x {pair.ref.sizes['x']} px at 10 m; "
        f"{SCENARIO['src_clouds']:.0%} unmasked source clouds, {SCENARIO['ref_clouds']:.0%} "
        f"masked reference clouds, source shifted by ({east:+.1f}, {north:+.1f}) m"
    )


# Side of the report's before/after window, in source pixels (the report's default).
_CROP = 512


def _cloudy_window(pair: SimulatedPair) -> tuple[slice, slice] | None:
    """A report window with some unmasked cloud in it, so the variance map shows it.

    The window whose cloud fraction is closest to a fifth: mostly clear ground for the
    before/after comparison, and enough cloud for the variance to light up.
    """
    ny, nx = pair.src.sizes["y"], pair.src.sizes["x"]
    cell = _CROP // 8
    if min(ny, nx) < _CROP:
        return None
    cover = pair.truth.src_clouds.coarsen(y=cell, x=cell, boundary="trim").mean().values
    windows = np.lib.stride_tricks.sliding_window_view(cover, (8, 8)).mean(axis=(-1, -2))
    iy, ix = np.unravel_index(np.argmin(np.abs(windows - 0.2)), windows.shape)
    return slice(iy * cell, iy * cell + _CROP), slice(ix * cell, ix * cell + _CROP)


def _open_store(store: Path) -> xr.Dataset:
    import rioxarray  # noqa: F401  (the CRS of the reopened store)
    import xarray as xr

    return xr.open_zarr(store)


def _score_against_truth(
    pair: SimulatedPair, src: xr.DataArray, written: xr.Dataset, model: Harmoniser
) -> dict[str, float]:
    """2 m scores against the simulator's truth, over clear pixels (one strided pass)."""
    import dask

    import xharmonise

    ny, nx = pair.truth.reflectance.shape[1:]
    step = max(1, math.ceil(math.sqrt(ny * nx / _MAX_SCORED)))
    pick = {"y": slice(None, None, step), "x": slice(None, None, step)}
    # The linear baseline at 2 m: the same fit's linear map, applied pixelwise.
    linear = model.baseline()
    lazy = {
        "truth": pair.truth.reflectance.isel(pick).data,
        "clouds": pair.truth.src_clouds.isel(pick).data,
        "initial": src.isel(pick).data,
        "linear": xharmonise.predict(src, linear)["prediction"].isel(pick).data,
        "model": written["prediction"].isel(pick).data,
    }
    if "variance" in written:
        lazy["variance"] = written["variance"].isel(pick).data
    values = dict(zip(lazy, dask.compute(*lazy.values()), strict=True))
    truth = values["truth"]
    clouds = values["clouds"]
    clear = ~clouds & np.isfinite(truth).all(0) & np.isfinite(values["model"]).all(0)
    scores = {}
    for stage in ("initial", "linear", "model"):
        err = values[stage].astype(np.float64) - truth
        scores[f"rmse_{stage}"] = float(np.sqrt(np.mean(err[:, clear] ** 2)))
    for name, learned in shift_estimates(model).items():
        error = np.asarray(learned) - np.asarray(pair.truth.shift)
        scores[f"shift_error_m_{name}"] = float(np.hypot(*error))
    if "variance" in values:
        var = values["variance"].mean(0)
        cloudy = clouds & np.isfinite(var)
        if cloudy.any() and clear.any():
            scores["variance_ratio"] = float(np.median(var[cloudy]) / np.median(var[clear]))
            scores["cloud_recall"] = float(np.mean(var[cloudy] > np.percentile(var[clear], 99)))
    return scores


def _describe_truth(scores: dict[str, float], pair: SimulatedPair, model: Harmoniser) -> str:
    lines = [
        "against the simulator's truth at 2 m (clear pixels): RMSE "
        f"initial {scores['rmse_initial']:.4f}, linear {scores['rmse_linear']:.4f}, "
        f"{model.method} {scores['rmse_model']:.4f}"
    ]
    for name, (east, north) in shift_estimates(model).items():
        lines.append(
            f"shift by {name}: ({east:+.2f}, {north:+.2f}) m, true "
            f"({pair.truth.shift[0]:+.2f}, {pair.truth.shift[1]:+.2f}) m: error "
            f"{scores[f'shift_error_m_{name}']:.2f} m"
        )
    if "variance_ratio" in scores:
        lines.append(
            f"variance: median {scores['variance_ratio']:.1f}x higher under the unmasked "
            f"clouds; {scores['cloud_recall']:.0%} of cloud pixels above the clear 99th "
            "percentile"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    # The command line lives in xharmonise.cli, which imports this module: a second way
    # in from here would make the two import each other.
    sys.exit(
        "python -m xharmonise.demo is gone: run `xharmonise demo` (or `python -m "
        "xharmonise demo`), with the same options"
    )
