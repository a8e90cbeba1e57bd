"""Throughput of CalibNet inference: eager network, kernel, Dask, GeoTIFF → Zarr, cluster.

Measures, in one run on the same randomly initialised 4-band CalibNet with a variance
head (``build_model("calibnet", 4, variance=True, seed=0)``):

(a) pixels/s of the plain eager forward ``net(x)`` on an in-memory (P, 4) tensor, one
    batch, and of xharmonise's inference kernel on the same data;
(b) ``predict(...).compute()`` of a lazily built Dask array (threaded scheduler);
(c) GeoTIFF (uint16, written once beforehand) → ``open_rasterio(chunks)`` → ``predict``
    → ``xharmonise.to_zarr``, end to end;
(d) (b) on a 2-process ``distributed.LocalCluster`` (1 thread per worker), with
    distributed's default ``MALLOC_TRIM_THRESHOLD_=65536`` in the workers and without it;

plus the MLP's achieved GFLOP/s (from the layer sizes) against a measured fp32 matmul
peak (P x 320 by 320 x 320 into a preallocated output, best of several).

Targets: kernel >= 1.5x eager and >= 60 % of the matmul rate; (b) >= 0.9x and
(c) >= 0.8x the kernel's in-memory rate. Each is recorded as met or not.

Usage: python benchmarks/inference.py [--pixels 65536] [--size 2048] [--chunks 512]
       [--repeat 3] [--no-cluster]
Writes benchmarks/results/inference.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import torch
import xarray as xr

import xharmonise
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

    rng = np.random.default_rng(1)
    dn = rng.integers(0, 5000, (len(BANDS), size, size), dtype=np.uint16)
    arr = xr.DataArray(
        dn,
        dims=("band", "y", "x"),
        coords={
            "band": np.arange(1, len(BANDS) + 1),
            "y": 5_000_000.0 - 2.0 * np.arange(size) - 1.0,
            "x": 600_000.0 + 2.0 * np.arange(size) + 1.0,
        },
    )
    arr = arr.rio.write_crs("EPSG:32631").rio.write_nodata(0)
    arr.rio.to_raster(path, tiled=True, blockxsize=512, blockysize=512)


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
    from distributed import Client, LocalCluster

    key = "MALLOC_TRIM_THRESHOLD_"
    # None unsets a variable in distributed's config: glibc's default (dynamic) threshold.
    environ = {key: None} if not trim else {}
    with dask.config.set(
        {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in environ.items()}
    ):
        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # a free port (None still binds 8787)
            memory_limit="2GiB",
        )
        client = Client(cluster)
        try:
            seen = client.run(lambda: os.environ.get(key))
            lazy = xharmonise.predict(src, model)
            seconds = _best(lambda: client.compute(lazy).result(), repeat)
        finally:
            client.close()
            cluster.close()
    return {
        "malloc_trim_threshold": sorted({str(v) for v in seen.values()})[0],
        "seconds": seconds,
        "pixels_per_s": src.shape[1] * src.shape[2] / seconds,
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
    import rioxarray

    with tempfile.TemporaryDirectory() as tmp:
        tif = Path(tmp) / "src.tif"
        _write_geotiff(tif, args.size)

        def _geotiff_to_zarr(i: list[int] = [0]) -> None:  # noqa: B006  (run counter)
            i[0] += 1
            img = rioxarray.open_rasterio(tif, chunks={"band": -1, "y": args.chunks, "x": -1})
            img = img.chunk({"x": args.chunks})
            out = xharmonise.predict(img, model)
            xharmonise.to_zarr(out, Path(tmp) / f"out{i[0]}.zarr")

        with dask.config.set(scheduler="threads"):
            zarr_s = _best(_geotiff_to_zarr, args.repeat)
    res["c_geotiff_to_zarr"] = {"pixels": n_px, "seconds": zarr_s, "pixels_per_s": n_px / zarr_s}
    print(f"(c) GeoTIFF → Zarr {n_px / zarr_s:,.0f} px/s")

    # (d) 2-process LocalCluster, with and without distributed's malloc trimming.
    if not args.no_cluster:
        res["d_local_cluster"] = {
            "default_trim": _cluster_rate(model, src, args.repeat, trim=True),
            "no_trim": _cluster_rate(model, src, args.repeat, trim=False),
        }
        for k, v in res["d_local_cluster"].items():
            print(f"(d) LocalCluster 2x1, {k}: {v['pixels_per_s']:,.0f} px/s")

    res["targets"] = {
        "kernel_vs_eager": {"ratio": kernel_rate / eager_rate, "target": 1.5},
        "kernel_vs_matmul_peak": {"ratio": kernel_gflops / mm_gflops, "target": 0.6},
        "dask_vs_kernel": {"ratio": n_px / dask_s / kernel_rate, "target": 0.9},
        "zarr_vs_kernel": {"ratio": n_px / zarr_s / kernel_rate, "target": 0.8},
    }
    for k, v in res["targets"].items():
        v["met"] = bool(v["ratio"] >= v["target"])
        print(f"target {k}: {v['ratio']:.2f} (>= {v['target']}) {'met' if v['met'] else 'MISSED'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
