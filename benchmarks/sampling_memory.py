"""Peak memory of the lazy sampling path on a large, lazily simulated scene.

Target (issue 2): sampling a scene of at least 8000 x 8000 source pixels stays under
1.5 GB peak RSS. As a user would, the measured process opens GeoTIFFs (uint16 DN, like
real products) lazily with rioxarray; they are simulated once beforehand by a separate
process (cached in the temp folder), so the figure is what `fit`'s data preparation
costs: scaling, co-registration, MTF degradation, patch validity, split and gathering
(10 m patches for all, 2 m patches for a BCNet-sized subset).

Usage: python benchmarks/sampling_memory.py [--size 8000] [--chunks 1024]
Writes benchmarks/results/sampling_memory.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dask

_SIMULATE = """
from xharmonise.simulate import simulate_pair
pair = simulate_pair(({size}, {size}), seed=0, ref_clouds=0.03, nodata_border=60,
                     dtype="uint16", chunks=1024)
pair.to_geotiff({folder!r})
"""


def _rss_mb() -> float:
    # ru_maxrss is the process's peak resident set size, in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8000)
    parser.add_argument("--chunks", type=int, default=1024)
    parser.add_argument("--full-patches", type=int, default=200)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.measure:
        _run_both(args)
        return

    folder = Path(tempfile.gettempdir()) / f"xharmonise-bench-{args.size}"
    if not (folder / "mask.tif").exists():
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", _SIMULATE.format(size=args.size, folder=str(folder))],
            check=True,
        )
        print(f"simulated the GeoTIFFs in {time.perf_counter() - t:.0f} s")

    import rioxarray

    from xharmonise import grid, psf, sampling
    from xharmonise.api import _sigmas
    from xharmonise.scaling import to_reflectance

    baseline = _rss_mb()
    t0 = time.perf_counter()
    chunks = {"band": -1, "y": args.chunks, "x": args.chunks}
    src = to_reflectance(rioxarray.open_rasterio(folder / "src.tif", chunks=chunks), scale=1e-4)
    ref = to_reflectance(
        rioxarray.open_rasterio(folder / "ref.tif", chunks=chunks), scale=1e-4, offset=-0.1
    )
    cloud = rioxarray.open_rasterio(folder / "mask.tif", chunks=chunks).isel(band=0)
    g = grid.pair_grid(src, ref)
    aligned = grid.align_source(src, g)
    ref_c = ref.isel(y=g.ref_rows, x=g.ref_cols)
    mask = cloud.isel(y=g.ref_rows, x=g.ref_cols)
    sigmas = _sigmas(["B2", "B3", "B4", "B8"], g.factor)
    margin = psf.kernel_margin(max(sigmas), g.factor, extra=2)
    ring = math.ceil(margin / g.factor)
    with dask.config.set(scheduler="threads"):
        coarse = sampling.reduce_to_reference(aligned, ref_c, mask, factor=g.factor, sigmas=sigmas)
        t_reduce = time.perf_counter() - t0
        index = sampling.patch_validity(coarse, patch_size=32, ring=ring)
        train, _ = sampling.split_patches(index, seed=0)
        patches = sampling.gather(index, train, coarse=coarse)
        full = sampling.gather(
            index,
            train[: args.full_patches],
            coarse=coarse,
            src=aligned,
            factor=g.factor,
            margin=margin,
        )
    elapsed = time.perf_counter() - t0
    peak = _rss_mb()
    result = {
        "input": "uint16 GeoTIFFs opened lazily with rioxarray",
        "source_pixels": [args.size, args.size],
        "chunks": args.chunks,
        "patches": index.counts,
        "train_patches_gathered": len(patches.ref),
        "full_resolution_patches_gathered": len(full.src_full),
        "baseline_rss_mb": round(baseline, 1),
        "peak_rss_mb": round(peak, 1),
        "target_peak_rss_mb": 1536,
        "meets_target": peak < 1536,
        "reduce_seconds": round(t_reduce, 1),
        "total_seconds": round(elapsed, 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    result["gdal_cachemax"] = os.environ.get("GDAL_CACHEMAX", "GDAL default (5 % of RAM)")
    print(json.dumps(result))


def _run_both(args: argparse.Namespace) -> None:
    """Measure in fresh processes: with GDAL's default block cache and with 256 MB."""
    # GDAL's block cache (5 % of RAM by default, 1.2 GB here) is GDAL's, not ours: it is
    # reported apart so that our own footprint is visible.
    runs = []
    for cache in (None, "256"):
        env = dict(os.environ)
        env.pop("GDAL_CACHEMAX", None)
        if cache:
            env["GDAL_CACHEMAX"] = cache
        cmd = [
            sys.executable,
            __file__,
            "--measure",
            "--size",
            str(args.size),
            "--chunks",
            str(args.chunks),
            "--full-patches",
            str(args.full_patches),
        ]
        done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
        print(done.stdout, end="")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    out = Path(__file__).parent / "results" / "sampling_memory.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"benchmark": "sampling_memory", "runs": runs}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
