"""Distributed inference: predict and write Zarr on a dask.distributed cluster.

Training is small and runs in this process; applying the model at full resolution is the
large part, and it parallelises over chunks. Here the cluster is a LocalCluster of worker
processes on this machine; the same code runs on any cluster (Kubernetes, HPC, Coiled)
by connecting ``Client`` to its scheduler instead, with the output on shared storage or
an object store (``s3://...``) that every worker can reach.

Run from the repository root:

    python examples/cluster_inference.py                   # linear, 2 workers, 2000 px
    python examples/cluster_inference.py --method calibnet --iterations 300 --out out.zarr
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import dask
import numpy as np
import rioxarray  # noqa: F401  (registers .rio, which reads the CRS back from the store)
import xarray as xr
from distributed import Client, LocalCluster

import xharmonise
from xharmonise.models import METHODS
from xharmonise.simulate import simulate_pair


def main(
    size: int = 2000,
    out: str | None = None,
    *,
    workers: int = 2,
    method: str = "linear",
    iterations: int = 100,
    chunk: int = 1000,
) -> xr.Dataset:
    """Fit on a simulated pair, predict through a LocalCluster's client, read back."""
    # A simulated Pleiades (2 m) / Sentinel-2 (10 m) pair with masked reference clouds.
    # chunks= makes the source Dask-backed: the full-resolution image is never in memory
    # at once, in this process or on any worker.
    pair = simulate_pair((size, size), seed=0, ref_clouds=0.05, chunks=chunk)

    # Fitting needs only reference-resolution arrays and a few thousand patches: it runs
    # here, with the threaded scheduler, before the cluster exists.
    t0 = time.perf_counter()
    model = xharmonise.fit(
        pair.src,
        pair.ref,
        method=method,
        mask=pair.mask,
        iterations=iterations,  # neural methods only
        patch_size=16,
        progress=False,
    )
    print(f"{model}  (fit {time.perf_counter() - t0:.1f} s)")
    print(model.metrics.sel(metric="rmse").to_pandas().round(4).to_string())

    # predict is lazy: a graph over the source chunks that holds the model weights once,
    # so they travel to each worker once rather than with every task.
    harmonised = xharmonise.predict(pair.src, model)
    print(f"prediction: {harmonised['prediction'].data.npartitions} chunks to compute")

    store = out or str(Path(tempfile.mkdtemp()) / "distributed.zarr")
    # One thread per worker process: the pixel kernel (NumPy / torch) is already
    # vectorised, and processes avoid the GIL for the Python parts of each task.
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            # Any free port for the scheduler's web server: None would not turn it off
            # but bind the default 8787, and only warn when another cluster holds it.
            dashboard_address=":0",
            memory_limit="1GiB",
        ) as cluster,
        Client(cluster) as client,
    ):
        print(f"cluster: {len(client.scheduler_info()['workers'])} workers")
        t0 = time.perf_counter()
        # to_zarr computes with the active scheduler: make it this client explicitly.
        # Every chunk becomes one Zarr shard written by one task, so workers never write
        # to the same object.
        with dask.config.set(scheduler=client):
            xharmonise.to_zarr(harmonised, store)
        print(f"wrote {store} on the cluster in {time.perf_counter() - t0:.1f} s")

    # Read back with plain xarray: the CF grid mapping gives rioxarray the CRS again.
    back = xr.open_zarr(store)
    if back.rio.crs != pair.src.rio.crs:
        raise RuntimeError(f"the store's CRS {back.rio.crs} is not {pair.src.rio.crs}")
    window = back["prediction"].isel(y=slice(0, 200), x=slice(0, 200)).values
    print(
        f"read back {dict(back.sizes)}, CRS {back.rio.crs}, "
        f"{np.isfinite(window).mean():.1%} finite in the first 200 x 200 pixels"
    )
    return back


if __name__ == "__main__":
    # The guard matters: worker processes re-import this file, and must not start
    # clusters of their own.
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2000, help="source side, 2 m pixels")
    parser.add_argument("--out", default=None, help="output Zarr store (default: a temp dir)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--method", default="linear", choices=list(METHODS))
    parser.add_argument(
        "--iterations", type=int, default=100, help="training budget of neural methods"
    )
    parser.add_argument("--chunk", type=int, default=1000, help="source chunk side, pixels")
    args = parser.parse_args()
    main(
        args.size,
        args.out,
        workers=args.workers,
        method=args.method,
        iterations=args.iterations,
        chunk=args.chunk,
    )
