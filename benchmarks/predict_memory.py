"""Peak RSS of a streamed predict over scenes of 10^7, 10^8 and 10^9 pixels.

Target (issue 4): peak RSS flat (within 20 %) from 10^8 to 10^9 pixels. The input is a
lazily built scene: one simulated 1024 x 1024 Pleiades tile, repeated by Dask (no scene
is ever held), so the figure is that of the prediction pipeline itself. Each size runs in
a fresh process; the prediction is reduced (sum) as it streams, so no output is held.

Usage: python benchmarks/predict_memory.py [--method linear] [--sizes 1e7 1e8 1e9]
Writes benchmarks/results/predict_memory_<method>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

TILE = 1024


def _measure(pixels: float, method: str) -> dict:
    import dask
    import dask.array as da
    import numpy as np

    import xharmonise
    from xharmonise.simulate import simulate_pair

    pair = simulate_pair((TILE, TILE), seed=0)
    model = xharmonise.fit(
        pair.src, pair.ref, method=method, iterations=20, patch_size=16, progress=False
    )
    side = math.ceil(math.sqrt(pixels) / TILE)
    tile = da.from_array(pair.src.values, chunks=(4, TILE, TILE))
    scene = da.tile(tile, (1, side, side))
    import xarray as xr

    n = side * TILE
    src = xr.DataArray(
        scene,
        dims=("band", "y", "x"),
        coords={
            "band": pair.src["band"].values,
            "y": 5000000.0 - 2.0 * (np.arange(n) + 0.5),
            "x": 500000.0 + 2.0 * (np.arange(n) + 0.5),
        },
    ).rio.write_crs(pair.src.rio.crs)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads"):
        total = xharmonise.predict(src, model)["prediction"].sum().compute()
    seconds = time.perf_counter() - t0
    return {
        "method": method,
        "pixels": n * n,
        "chunks": f"{TILE}x{TILE}",
        "finite_sum": bool(np.isfinite(total)),
        "baseline_rss_mb": round(base, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "seconds": round(seconds, 1),
        "pixels_per_s": round(n * n / seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="linear")
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e7, 1e8, 1e9])
    parser.add_argument("--measure", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(_measure(args.measure, args.method)))
        return
    runs = []
    for size in args.sizes:
        cmd = [sys.executable, __file__, "--method", args.method, "--measure", str(size)]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), flush=True)
    peaks = {r["pixels"]: r["peak_rss_mb"] for r in runs}
    big = [r for r in runs if r["pixels"] >= 1e8 * 0.9]
    flat = None
    if len(big) >= 2:
        lo, hi = min(r["peak_rss_mb"] for r in big), max(r["peak_rss_mb"] for r in big)
        flat = {"ratio_max_over_min": round(hi / lo, 3), "target": 1.2, "met": hi / lo <= 1.2}
    out = Path(__file__).parent / "results" / f"predict_memory_{args.method}.json"
    out.write_text(
        json.dumps({"runs": runs, "peaks_mb": peaks, "flat_1e8_to_1e9": flat}, indent=2) + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
