"""Throughput of CalibNet inference: eager network, kernel, Dask, GeoTIFF → Zarr, cluster.

Measures, in one run on the same randomly initialised 4-band CalibNet with a variance
head (``build_model("calibnet", 4, variance=True, seed=0)``):

(a) pixels/s of the plain eager forward ``net(x)`` on an in-memory (P, 4) tensor, one
    batch, and of xharmonise's inference kernel on the same data;
(b) ``predict(...).compute()`` of a lazily built Dask array (threaded scheduler);
(c) GeoTIFF (uint16 DN of a simulated scene, written once beforehand) →
    ``open_rasterio(chunks)`` → ``predict`` → ``xharmonise.to_zarr``, end to end, with the
    store's compression ratio (a simulated scene, not noise: noise does not compress) and
    a check that xarray, rioxarray and zarr read it back as computed in memory; the same
    with ``compressor="lz4"`` (rate, ratio, read-back); and the
    same with the uncertainty of #15 on: the model given a head calibration (10 knots per
    band) and a training domain (fitted on another simulated scene), predicted
    ``with_applicability=True``; the two timed alternately, for the throughput they cost;
(d) a 2-process ``distributed.LocalCluster`` (1 thread per worker) against the threaded
    scheduler, each timed in turn on the same graphs: (c)'s GeoTIFF → Zarr, the work a
    cluster does, with the stores compared value for value; and ``compute()`` of (b),
    which ships every result to the client (8 float32 per pixel through a socket), with
    distributed's default ``MALLOC_TRIM_THRESHOLD_=65536`` in the workers and without it;
(e) the ratios (b) and (c) are judged by: the kernel on (c)'s scene held in memory as
    (P, 4) float32 (the same pixels, into a preallocated output), in one call on torch's
    own threads and split in one slice per core on one torch thread each (the regime of
    the Dask tasks), the faster of the two per round; (b), (c) and (c) with lz4; each
    timed once per round in ``2 * repeat`` rounds after a warm-up, the order rotated
    every round; each ratio is the median of the rounds' own (a slow spell of the shared
    machine hits a round's runs alike, where best-of figures taken minutes apart differ by
    10-20 % on this VM);

plus the MLP's achieved GFLOP/s (from the layer sizes) against a measured fp32 matmul
peak (P x 320 by 320 x 320 into a preallocated output, best of several).

Targets: kernel >= 1.5x eager and >= 60 % of the matmul rate; (b) and (c) >= 0.9x the
kernel's in-memory rate (paired, (e)); the cluster's GeoTIFF → Zarr >= 0.9x the threaded
one's. Each is recorded as met or not.

Usage: python benchmarks/inference.py [--pixels 65536] [--size 2048] [--chunks 512]
       [--repeat 3] [--no-cluster]
Writes benchmarks/results/inference.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import torch
import xarray as xr

import xharmonise
from xharmonise.applicability import fit_domain
from xharmonise.calibration import Calibration
from xharmonise.grid import pair_grid
from xharmonise.harmoniser import FitReport, Harmoniser, Mapping
from xharmonise.inference import PixelKernel
from xharmonise.models import build_model
from xharmonise.simulate import simulate_pair

BANDS = ["B2", "B3", "B4", "B8"]
DN_SCALE = 1e-4
RESULTS = Path(__file__).resolve().parent / "results" / "inference.json"


def _best(fn: Callable[[], Any], repeat: int) -> float:
    """Best wall time of ``repeat`` calls after one warm-up (noisy shared VM: min)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _model() -> Harmoniser:
    net = build_model("calibnet", len(BANDS), variance=True, seed=0).eval()
    n = len(BANDS)
    # Any pair's grid: predict applies the mapping to whatever source it is given.
    pair = simulate_pair((100, 100), seed=0)
    mapping = Mapping(
        method="calibnet",
        src_bands=tuple(BANDS),
        ref_bands=tuple(BANDS),
        factor=5,
        sigmas=(2.5,) * n,
        src_scale=DN_SCALE,
        src_offset=0.0,
        src_dtype="uint16",
        linear=np.zeros((n, n + 1), np.float32),
        net=net,
        variance=True,
        grid=pair_grid(pair.src, pair.ref),
        applied_shift=None,
    )
    report = FitReport(
        metrics=xr.DataArray(
            np.zeros((n, 1, 1)),
            dims=("band", "metric", "stage"),
            coords={"band": BANDS, "metric": ["rmse"], "stage": ["model"]},
        ),
        history={},
        patches={},
        samples={},
        shift_estimate=None,
        versions={},
    )
    return Harmoniser(mapping=mapping, fit_report=report)


def _with_uncertainty(model: Harmoniser) -> Harmoniser:
    """The model with what #15 adds to predict: a head calibration, as many knots per
    band as fit can give it, and a training domain of a simulated scene like (c)'s
    (another seed: the cost does not depend on where pixels fall, only on the sizes)."""
    n = len(BANDS)
    knots = tuple(tuple(np.geomspace(1e-3, 0.1, 10).tolist()) for _ in range(n))
    sigmas = tuple(tuple(np.geomspace(5e-4, 0.08, 10).tolist()) for _ in range(n))
    calibration = Calibration("head", knots, sigmas, patches=13, pixels=3000)
    scene = simulate_pair((600, 600), seed=2).src.values
    domain = fit_domain(scene.reshape(n, -1).T)
    mapping = dataclasses.replace(model.mapping, calibration=calibration, domain=domain)
    return Harmoniser(mapping=mapping, fit_report=model.fit_report)


def _paired(
    runs: dict[str, Callable[[], Any]],
    rounds: int,
    between: Callable[[], None] = lambda: None,
) -> dict[str, list[float]]:
    """Seconds of each run, once per round after a warm-up of each, the order rotated every
    round so that no run always follows the same one (with two runs: swapped), on the
    threaded scheduler unless a run picks its own; ``between`` (untimed) after every run.
    (c)'s uncertainty cost, (d)'s cluster turns and (e) are timed this way."""
    names = list(runs)
    seconds: dict[str, list[float]] = {k: [] for k in names}
    with dask.config.set(scheduler="threads"):
        for fn in runs.values():
            fn()
            between()
        for i in range(rounds):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                t0 = time.perf_counter()
                runs[name]()
                seconds[name].append(time.perf_counter() - t0)
                between()
    return seconds


def _uncertainty_cost(write: Callable[[bool], None], repeat: int) -> dict[str, Any]:
    """(c) without and with calibration and applicability, in ``2 * repeat`` pairs after a
    warm-up of each, the order swapped every pair; the throughput lost is the median of
    the pairs' own (a slow spell of the shared machine hits both runs of a pair alike),
    beside the best of each."""
    seconds = _paired({"without": lambda: write(False), "with": lambda: write(True)}, 2 * repeat)
    runs = {False: seconds["without"], True: seconds["with"]}
    pairs = [1 - a / b for a, b in zip(runs[False], runs[True], strict=True)]
    without, with_ = min(runs[False]), min(runs[True])
    return {
        "seconds_without": without,
        "seconds_with": with_,
        "runs_without": runs[False],
        "runs_with": runs[True],
        "throughput_lost_pairs": pairs,
        "throughput_lost_best": 1 - without / with_,
        "throughput_lost": float(np.median(pairs)),
    }


def _mlp_flops(net: torch.nn.Module) -> int:
    """Multiply-adds x 2 of the kernel's three matmuls, per pixel (BatchNorm folded)."""
    c, h = net.n_bands, net.hidden
    heads = 2 * c if net.fc_var is not None else c
    return 2 * (c * h + h * h + h * heads)


def _lazy_source(size: int, chunks: int) -> xr.DataArray:
    # Reflectance-like float32 built lazily and cheaply: generation must not dominate.
    shape = (len(BANDS), size, size)
    data = da.random.default_rng(0).random(shape, chunks=(-1, chunks, chunks), dtype=np.float32)
    data = data * np.float32(0.5)
    return xr.DataArray(data, dims=("band", "y", "x"), coords={"band": BANDS})


def _write_geotiff(path: Path, size: int) -> None:
    import rioxarray  # noqa: F401  (registers .rio)

    # A simulated 2 m scene as uint16 DN (reflectance x 1e4, the model's DN_SCALE).
    src = simulate_pair((size, size), seed=1).src
    dn = np.clip(np.rint(src.values / DN_SCALE), 1, 65535).astype(np.uint16)
    arr = src.copy(data=dn).assign_coords(band=np.arange(1, len(BANDS) + 1))
    arr.attrs = {}
    arr = arr.rio.write_nodata(0)
    arr.rio.to_raster(path, tiled=True, blockxsize=512, blockysize=512)


def _open_geotiff(path: Path, chunks: int) -> xr.DataArray:
    import rioxarray

    # Windows on the file's 512² tiles: each read decodes whole tiles once.
    return rioxarray.open_rasterio(path, chunks={"band": -1, "y": chunks, "x": chunks})


def _store_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _check_store(path: Path, expected: xr.Dataset) -> None:
    """xarray, rioxarray and zarr read the store back as ``expected``, bit for bit."""
    import rioxarray  # noqa: F401  (registers .rio)
    import zarr

    back = xr.open_zarr(path)
    for name in expected.data_vars:
        np.testing.assert_array_equal(back[name].values, expected[name].values)
        np.testing.assert_array_equal(zarr.open_group(path, mode="r")[name][:], back[name])
    if back.rio.crs != expected.rio.crs or back.rio.transform() != expected.rio.transform():
        raise AssertionError("the store lost the georeferencing")


def _cluster_rate(model: Harmoniser, src: xr.DataArray, repeat: int, trim: bool) -> dict:
    """(d): predict on a 2 x 1-thread LocalCluster, with or without malloc trimming."""
    # The nanny copies pre-spawn-environ into this process's os.environ before spawning,
    # and a variable already in os.environ overrides the config: without saving and
    # restoring it, the first cluster's setting would leak into the second.
    key = "MALLOC_TRIM_THRESHOLD_"
    saved = os.environ.pop(key, None)
    if trim:
        os.environ[key] = str(dask.config.get(f"distributed.nanny.pre-spawn-environ.{key}"))
    try:
        return _cluster_run(model, src, repeat, trim)
    finally:
        os.environ.pop(key, None)
        if saved is not None:
            os.environ[key] = saved


def _cluster_run(model: Harmoniser, src: xr.DataArray, repeat: int, trim: bool) -> dict:

    key = "MALLOC_TRIM_THRESHOLD_"
    # None unsets a variable in distributed's config: glibc's default (dynamic) threshold.
    environ = {key: None} if not trim else {}
    with dask.config.set(
        {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in environ.items()}
    ):
        with _local_cluster() as client:
            seen = client.run(lambda: os.environ.get(key))
            lazy = xharmonise.predict(src, model)
            seconds = _best(lambda: client.compute(lazy).result(), repeat)
    return {
        "malloc_trim_threshold": sorted({str(v) for v in seen.values()})[0],
        "seconds": seconds,
        "pixels_per_s": src.shape[1] * src.shape[2] / seconds,
    }


@contextmanager
def _local_cluster() -> Iterator[Any]:
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",  # a free port (None still binds 8787)
        memory_limit="2GiB",
    )
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def _zarr_on_cluster(
    model: Harmoniser, tif: Path, chunks: int, repeat: int, tmp: Path
) -> dict[str, Any]:
    """(d): GeoTIFF → Zarr on the threaded scheduler and on a LocalCluster, in turn."""
    img = _open_geotiff(tif, chunks)
    n_px = img.shape[1] * img.shape[2]
    stores: dict[str, list[Path]] = {"threads": [], "cluster": []}

    def _one(kind: str, scheduler: Any) -> None:
        stores[kind].append(tmp / f"{kind}{len(stores[kind])}.zarr")
        with dask.config.set(scheduler=scheduler):
            xharmonise.to_zarr(xharmonise.predict(img, model), stores[kind][-1], progress=False)

    with _local_cluster() as client:
        # Alternate so that a slow spell of the shared machine hits both alike.
        runs = _paired(
            {
                "threads": lambda: _one("threads", "threads"),
                "cluster": lambda: _one("cluster", client.get),
            },
            2 * repeat,
        )
    threads, cluster = xr.open_zarr(stores["threads"][-1]), xr.open_zarr(stores["cluster"][-1])
    identical = all(
        np.array_equal(threads[n].values, cluster[n].values, equal_nan=True)
        for n in threads.data_vars
    )
    # Best of the timed runs (after the warm-up: imports, the model's shipping); the ratio
    # is the median of each turn's own, as (e)'s.
    best = {k: min(v) for k, v in runs.items()}
    ratios = [t / c for t, c in zip(runs["threads"], runs["cluster"], strict=True)]
    return {
        "threads": {"seconds": best["threads"], "pixels_per_s": n_px / best["threads"]},
        "cluster": {"seconds": best["cluster"], "pixels_per_s": n_px / best["cluster"]},
        "runs": runs,
        "ratios": ratios,
        "median_ratio": float(np.median(ratios)),
        "identical": identical,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pixels", type=int, default=65536, help="in-memory batch (a)")
    parser.add_argument("--size", type=int, default=2048, help="side of the (b)-(d) scenes")
    parser.add_argument("--chunks", type=int, default=512, help="Dask chunk side")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs (best kept)")
    parser.add_argument("--no-cluster", action="store_true", help="skip (d)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    model = _model()
    net = model.net
    flops = _mlp_flops(net)
    res: dict[str, Any] = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
        },
        "model": {"method": "calibnet", "bands": len(BANDS), "variance": True},
        "mflop_per_pixel": flops / 1e6,
        "sizes": vars(args) | {"out": str(args.out)},
    }

    # (a) in memory, one 65536-pixel batch.
    x = torch.rand(args.pixels, len(BANDS)) * 0.5
    xn = x.numpy()
    kernel = PixelKernel(net)
    with torch.inference_mode():
        eager_s = _best(lambda: net(x), args.repeat + 2)
    kernel_s = _best(lambda: kernel(xn), args.repeat + 2)
    a = torch.rand(args.pixels, net.hidden)
    b = torch.rand(net.hidden, net.hidden)
    c = torch.empty(args.pixels, net.hidden)
    mm_s = _best(lambda: torch.mm(a, b, out=c), args.repeat + 4)
    mm_gflops = 2 * args.pixels * net.hidden * net.hidden / mm_s / 1e9
    eager_rate = args.pixels / eager_s
    kernel_rate = args.pixels / kernel_s
    kernel_gflops = kernel_rate * flops / 1e9
    res["a_in_memory"] = {
        "eager_pixels_per_s": eager_rate,
        "kernel_pixels_per_s": kernel_rate,
        "kernel_tile": kernel.tile,
        "eager_gflops": eager_rate * flops / 1e9,
        "kernel_gflops": kernel_gflops,
        "matmul_peak_gflops": mm_gflops,
    }
    print(f"(a) eager {eager_rate:,.0f} px/s, kernel {kernel_rate:,.0f} px/s")
    print(f"    kernel {kernel_gflops:.1f} GFLOP/s vs matmul peak {mm_gflops:.1f} GFLOP/s")

    # (b) Dask, threaded scheduler, lazily built input.
    src = _lazy_source(args.size, args.chunks)
    n_px = args.size * args.size
    lazy = xharmonise.predict(src, model)
    with dask.config.set(scheduler="threads"):
        dask_s = _best(lambda: lazy.compute(), args.repeat)
    res["b_dask_threads"] = {"pixels": n_px, "seconds": dask_s, "pixels_per_s": n_px / dask_s}
    print(f"(b) dask threads {n_px / dask_s:,.0f} px/s ({n_px:,} px)")

    # (c) GeoTIFF → Zarr, end to end.
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        tif = tmp / "src.tif"
        _write_geotiff(tif, args.size)
        stores: list[Path] = []

        uncertain = _with_uncertainty(model)

        def _geotiff_to_zarr(
            uncertainty: bool = False, compressor: Literal["zstd", "lz4"] = "zstd"
        ) -> None:
            stores.append(tmp / f"out{len(stores)}.zarr")
            src = _open_geotiff(tif, args.chunks)
            if uncertainty:
                out = xharmonise.predict(src, uncertain, with_applicability=True)
            else:
                out = xharmonise.predict(src, model)
            xharmonise.to_zarr(out, stores[-1], progress=False, compressor=compressor)

        with dask.config.set(scheduler="threads"):
            zarr_s = _best(_geotiff_to_zarr, args.repeat)
            expected = xharmonise.predict(_open_geotiff(tif, args.chunks), model).compute()
        _check_store(stores[-1], expected)
        raw = sum(v.nbytes for v in expected.data_vars.values())
        res["c_geotiff_to_zarr"] = {
            "pixels": n_px,
            "seconds": zarr_s,
            "pixels_per_s": n_px / zarr_s,
            "compression_ratio": raw / _store_bytes(stores[-1]),
            "read_back": "xarray, rioxarray, zarr: identical",
            "uncertainty": _uncertainty_cost(_geotiff_to_zarr, args.repeat),
        }
        with dask.config.set(scheduler="threads"):
            lz4_s = _best(lambda: _geotiff_to_zarr(compressor="lz4"), args.repeat)
        _check_store(stores[-1], expected)
        res["c_geotiff_to_zarr_lz4"] = {
            "seconds": lz4_s,
            "pixels_per_s": n_px / lz4_s,
            "compression_ratio": raw / _store_bytes(stores[-1]),
            "read_back": "xarray, rioxarray, zarr: identical",
        }
        print(
            f"(c) with compressor='lz4': {n_px / lz4_s:,.0f} px/s, compression ratio "
            f"{res['c_geotiff_to_zarr_lz4']['compression_ratio']:.2f}"
        )
        app = res["c_geotiff_to_zarr"]["uncertainty"]
        print(
            f"(c) GeoTIFF → Zarr {n_px / zarr_s:,.0f} px/s, compression ratio "
            f"{res['c_geotiff_to_zarr']['compression_ratio']:.2f}; with calibration and "
            "applicability "
            f"{app['throughput_lost']:.1%} slower"
        )

        # (e) the kernel on (c)'s pixels in memory, paired with (b), (c) and (c) in lz4.
        dn = _open_geotiff(tif, args.chunks).values.reshape(len(BANDS), -1)
        pixels = np.ascontiguousarray(dn.T.astype(np.float32) * np.float32(DN_SCALE))
        kernel_out = np.empty((n_px, 2 * len(BANDS)), np.float32)
        cores = os.cpu_count() or 1
        pool = ThreadPoolExecutor(cores)

        def _kernel_split() -> None:
            # The pipeline's own regime: one slice per core, each on one torch thread.
            saved = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                done = [
                    pool.submit(kernel, x, out)
                    for x, out in zip(
                        np.array_split(pixels, cores),
                        np.array_split(kernel_out, cores),
                        strict=True,
                    )
                ]
                for f in done:
                    f.result()
            finally:
                torch.set_num_threads(saved)

        def _drop_stores() -> None:
            while stores:
                shutil.rmtree(stores.pop(), ignore_errors=True)

        _drop_stores()
        seconds = _paired(
            {
                "kernel": lambda: kernel(pixels, out=kernel_out),
                "kernel_split": _kernel_split,
                "dask": lambda: lazy.compute(),
                "zarr": _geotiff_to_zarr,
                "zarr_lz4": lambda: _geotiff_to_zarr(compressor="lz4"),
            },
            2 * args.repeat,
            between=_drop_stores,
        )
        pool.shutdown()
        # Each round's kernel is the faster of its two regimes on this machine.
        best_kernel = np.minimum(seconds["kernel"], seconds["kernel_split"]).tolist()
        ratios = {
            k: [a / b for a, b in zip(best_kernel, seconds[k], strict=True)]
            for k in ("dask", "zarr", "zarr_lz4")
        }
        res["e_paired"] = {
            "rounds": 2 * args.repeat,
            "seconds": seconds,
            "kernel_pixels_per_s": n_px / float(np.median(best_kernel)),
            "ratios_to_kernel": ratios,
            "median_ratio_to_kernel": {k: float(np.median(v)) for k, v in ratios.items()},
        }
        print(
            "(e) paired with the kernel on the same pixels in memory ("
            f"{res['e_paired']['kernel_pixels_per_s']:,.0f} px/s, median): "
            + ", ".join(
                f"{k} {v:.2f}x" for k, v in res["e_paired"]["median_ratio_to_kernel"].items()
            )
        )

        # (d) a 2-process LocalCluster against the threaded scheduler.
        if not args.no_cluster:
            res["d_local_cluster"] = {
                "geotiff_to_zarr": _zarr_on_cluster(model, tif, args.chunks, args.repeat, tmp),
                "compute_default_trim": _cluster_rate(model, src, args.repeat, trim=True),
                "compute_no_trim": _cluster_rate(model, src, args.repeat, trim=False),
            }
            z = res["d_local_cluster"]["geotiff_to_zarr"]
            print(
                f"(d) GeoTIFF → Zarr: threads {z['threads']['pixels_per_s']:,.0f} px/s, "
                f"LocalCluster 2x1 {z['cluster']['pixels_per_s']:,.0f} px/s, identical "
                f"{z['identical']}"
            )
            for k in ("compute_default_trim", "compute_no_trim"):
                v = res["d_local_cluster"][k]
                print(f"(d) LocalCluster 2x1 {k}: {v['pixels_per_s']:,.0f} px/s")

    paired = res["e_paired"]["median_ratio_to_kernel"]
    res["targets"] = {
        "kernel_vs_eager": {"ratio": kernel_rate / eager_rate, "target": 1.5},
        "kernel_vs_matmul_peak": {"ratio": kernel_gflops / mm_gflops, "target": 0.6},
        "dask_vs_kernel": {"ratio": paired["dask"], "target": 0.9},
        "zarr_vs_kernel": {"ratio": paired["zarr"], "target": 0.9},
        "zarr_lz4_vs_kernel": {"ratio": paired["zarr_lz4"], "target": 0.9},
        # Throughput with calibration and applicability over without: at least 0.95.
        "zarr_uncertainty_vs_without": {
            "ratio": 1 - res["c_geotiff_to_zarr"]["uncertainty"]["throughput_lost"],
            "target": 0.95,
        },
    }
    if not args.no_cluster:
        z = res["d_local_cluster"]["geotiff_to_zarr"]
        res["targets"]["cluster_vs_threads_zarr"] = {
            "ratio": z["median_ratio"],
            "target": 0.9,
        }
    for k, v in res["targets"].items():
        v["met"] = bool(v["ratio"] >= v["target"])
        print(f"target {k}: {v['ratio']:.2f} (>= {v['target']}) {'met' if v['met'] else 'MISSED'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
