"""Quickstart: harmonise a simulated Pleiades image with its Sentinel-2 reference.

Run: python examples/quickstart.py [--size 1000] [--out quickstart.zarr]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import xarray as xr

import xharmonise
from xharmonise.simulate import simulate_pair


def main(size: int = 1000, out: str | None = None) -> xr.Dataset:
    """Simulate a pair, fit the linear baseline, predict lazily and write Zarr."""
    # A 2 m source and a 10 m reference with masked clouds, as lazy Dask arrays.
    pair = simulate_pair((size, size), seed=0, ref_clouds=0.05, chunks=512)
    model = pair.src.harmonise.fit(pair.ref, method="linear", mask=pair.mask)
    print(model)
    print(model.metrics.sel(metric="rmse").to_pandas().round(4))

    harmonised = pair.src.harmonise.predict(model)  # lazy: nothing computed yet
    store = out or str(Path(tempfile.mkdtemp()) / "quickstart.zarr")
    xharmonise.to_zarr(harmonised, store)
    back = xr.open_zarr(store)
    print(f"wrote {store}: {dict(back.sizes)}, CRS {back.rio.crs}")
    return back


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    main(args.size, args.out)
