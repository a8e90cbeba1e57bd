"""Real data: harmonise a 5 m aerial orthophoto strip with a 10 m Sentinel-2 image.

The pair in ../shared/data/ngi_s2 (see its README) is a South African NGI aerial RGB strip
at 5 m and a Sentinel-2 L1C image (B4, B3, B2) at 10 m over the same area, both 8-bit
display-stretched. It is not a Pleiades / L2A pair, but it has what makes real pairs
hard: two sensors, two dates, different radiometric scaling and MTF, no-data borders, and
a source grid that is not in phase with the Sentinel-2 grid (xharmonise reprojects it
lazily onto a 5 m grid that is). The resolution factor is 2, not 5.

Run from the repository root:

    python examples/aerial_s2.py                         # whole strip 1, linear
    python examples/aerial_s2.py --size 600 --calibnet-iterations 200 --out aerial.zarr
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import rioxarray
import xarray as xr

import xharmonise

# The shared test data live next to the repository, not inside it.
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ngi_s2"


def open_pair(data: Path, strip: int, size: int | None) -> tuple[xr.DataArray, xr.DataArray]:
    """Open the aerial strip and the Sentinel-2 image lazily, optionally cropping the strip.

    Nothing is read here: rioxarray only reads the headers and returns Dask arrays. The
    band axis is one chunk because xharmonise maps all bands of a pixel together.
    """
    aerial = rioxarray.open_rasterio(
        data / f"ngi_rgb_byte_{strip}.tif", chunks={"band": -1, "y": 512, "x": 512}
    )
    s2 = rioxarray.open_rasterio(
        data / "sentinel2_b432_byte.tif", chunks={"band": -1, "y": 512, "x": 512}
    )
    # Name the aerial bands: its file has none, and the names show up in the metrics.
    aerial = aerial.assign_coords(band=["R", "G", "B"])
    if size:
        # A centred window of the strip: the Sentinel-2 image need not be cropped, fit
        # works on the overlap of the two.
        cy, cx = aerial.sizes["y"] // 2, aerial.sizes["x"] // 2
        half = size // 2
        aerial = aerial.isel(
            y=slice(max(0, cy - half), cy + half), x=slice(max(0, cx - half), cx + half)
        )
    return aerial, s2


def show_metrics(model: xharmonise.Harmoniser) -> None:
    """Print RMSE and R² per band for the untouched source, the linear baseline and the model.

    They are computed on the held-out patches at 10 m, the source being blurred with the
    Sentinel-2 MTF and aggregated first, as the paper does.
    """
    for metric in ("rmse", "r2"):
        print(f"{metric}:")
        print(model.metrics.sel(metric=metric).to_pandas().round(4).to_string())


def main(
    size: int | None = None,
    out: str | None = None,
    *,
    strip: int = 1,
    data: Path = DATA,
    calibnet_iterations: int = 0,
    patch_size: int = 32,
) -> xr.Dataset:
    """Fit linear (and optionally CalibNet) on a real pair, predict at 5 m, write Zarr."""
    aerial, s2 = open_pair(Path(data), strip, size)
    print(f"aerial {dict(aerial.sizes)} at 5 m, Sentinel-2 {dict(s2.sizes)} at 10 m")

    # Both images are 8-bit stretches, not reflectances: 1/255 puts them in [0, 1], the
    # range xharmonise checks inputs against. The aerial bands are R, G, B and the S2
    # bands B4, B3, B2 (red, green, blue): same order, so they pair up without bands=.
    # No cloud mask ships with this L1C subset, so no mask=.
    t0 = time.perf_counter()
    linear = xharmonise.fit(
        aerial, s2, method="linear", scale=1 / 255, patch_size=patch_size, progress=False
    )
    print(f"\n{linear}  ({time.perf_counter() - t0:.1f} s)")
    show_metrics(linear)

    model = linear
    if calibnet_iterations:
        # The paper's per-pixel MLP; a small CPU budget is enough to see whether the
        # relation between the two stretches is more than linear.
        t0 = time.perf_counter()
        model = xharmonise.fit(
            aerial,
            s2,
            method="calibnet",
            scale=1 / 255,
            patch_size=patch_size,
            iterations=calibnet_iterations,
            progress=False,
        )
        print(f"\n{model}  ({time.perf_counter() - t0:.1f} s)")
        show_metrics(model)

    # Predict at the aerial's own 5 m grid and chunks: lazy, nothing computed yet.
    harmonised = xharmonise.predict(aerial, model)
    store = out or str(Path(tempfile.mkdtemp()) / "aerial_harmonised.zarr")
    t0 = time.perf_counter()
    xharmonise.to_zarr(harmonised, store)  # the one place where the 5 m data is computed
    back = xr.open_zarr(store)
    print(
        f"\nwrote {store} in {time.perf_counter() - t0:.1f} s: {dict(back.sizes)}, "
        f"CRS kept: {back.rio.crs == aerial.rio.crs}"
    )
    return back


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", type=int, default=None, help="crop the strip to a centred SIZE x SIZE window"
    )
    parser.add_argument("--out", default=None, help="output Zarr store (default: a temp dir)")
    parser.add_argument("--strip", type=int, choices=(1, 2), default=1)
    parser.add_argument("--data", type=Path, default=DATA, help="the ngi_s2 folder")
    parser.add_argument(
        "--calibnet-iterations",
        type=int,
        default=0,
        help="also fit CalibNet with this many iterations (0: linear only)",
    )
    parser.add_argument("--patch-size", type=int, default=32, help="patch side at 10 m")
    args = parser.parse_args()
    if not args.data.is_dir():
        parser.exit(1, f"{args.data} not found: the ngi_s2 test data live in ../shared/data\n")
    main(
        args.size,
        args.out,
        strip=args.strip,
        data=args.data,
        calibnet_iterations=args.calibnet_iterations,
        patch_size=args.patch_size,
    )
