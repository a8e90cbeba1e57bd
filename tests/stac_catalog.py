"""A static STAC catalogue of local Cloud-Optimised GeoTIFFs, for offline STAC tests.

The suite cannot reach Earth Search or the Planetary Computer, so these helpers write
what such a catalogue serves, from a simulated Sentinel-2 reference: per date and band,
one COG of uint16 DN as an L2A product stores them (nodata 0, processing baseline
04.00+ offset of -0.1 by default), an optional Sen2Cor ``SCL`` asset from a cloud mask,
and a self-contained pystac catalogue whose items carry the projection, raster and eo
extensions that odc-stac reads. :func:`load` reads it back with odc-stac, lazily.

Examples
--------
>>> from xharmonise.simulate import simulate_pair
>>> pair = simulate_pair((200, 200), seed=0, ref_clouds=0.2)
>>> cat = write_catalog(getfixture("tmp_path"), pair.ref, mask=pair.mask)
>>> ds = load(cat, bands=["B02", "SCL"])
>>> ds["B02"].dims, ds["B02"].dtype, ds["SCL"].dtype
(('time', 'y', 'x'), dtype('uint16'), dtype('uint8'))
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pystac
import rasterio
import xarray as xr
from odc.geo.geobox import GeoBox
from pystac.extensions.eo import Band, EOExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension

# Reflectance = DN * SCALE + offset; the offset is -0.1 from processing baseline 04.00
# (January 2022) on, 0 before.
SCALE = 1e-4
BASELINE_OFFSET = -0.1

# Sen2Cor scene classification codes written to the SCL asset.
SCL_NODATA, SCL_VEGETATION, SCL_CLOUD_HIGH = 0, 4, 9

# The date a (band, y, x) reference gets: a Sentinel-2 overpass time over Europe.
DEFAULT_DATE = np.datetime64("2022-06-15T10:56:21")

# Sentinel-2 MSI band: (common name, centre wavelength um, FWHM um), as Earth Search
# v1 describes them; keyed by the L2A asset name.
_S2 = {
    "B01": ("coastal", 0.443, 0.027),
    "B02": ("blue", 0.490, 0.098),
    "B03": ("green", 0.560, 0.045),
    "B04": ("red", 0.665, 0.038),
    "B05": ("rededge", 0.704, 0.019),
    "B06": ("rededge", 0.740, 0.018),
    "B07": ("rededge", 0.783, 0.028),
    "B08": ("nir", 0.842, 0.145),
    "B8A": ("nir08", 0.865, 0.033),
    "B09": ("nir09", 0.945, 0.026),
    "B11": ("swir16", 1.610, 0.143),
    "B12": ("swir22", 2.190, 0.242),
}
# Earth Search asset keys, which are common names (with the red edges numbered).
_EARTH_SEARCH = {
    "coastal": "B01",
    "blue": "B02",
    "green": "B03",
    "red": "B04",
    "rededge1": "B05",
    "rededge2": "B06",
    "rededge3": "B07",
    "nir": "B08",
    "nir08": "B8A",
    "nir09": "B09",
    "swir16": "B11",
    "swir22": "B12",
}


def _s2_band(label: str) -> str | None:
    """The L2A band (``B02``) a label names (``B2``, ``b02``, ``blue``...), or None."""
    label = str(label).strip()
    if label.lower() in _EARTH_SEARCH:
        return _EARTH_SEARCH[label.lower()]
    up = label.upper()
    if up.startswith("B") and up[1:].isdigit():
        up = f"B{int(up[1:]):02d}"
    return up if up in _S2 else None


def _as_dates(ref: xr.DataArray) -> tuple[xr.DataArray, list[dt.datetime]]:
    """``ref`` as (time, band, y, x) and its dates as timezone-aware UTC datetimes."""
    if "time" not in ref.dims:
        when = ref["time"].values if "time" in ref.coords else DEFAULT_DATE
        ref = ref.expand_dims(time=[np.datetime64(when, "ns")])
    ref = ref.transpose("time", "band", "y", "x")
    # STAC datetimes are UTC; naive datetime64 values are taken to be UTC already.
    dates = [pd.Timestamp(t).to_pydatetime().replace(tzinfo=dt.UTC) for t in ref["time"].values]
    return ref, dates


def to_dn(reflectance: np.ndarray, *, offset: float) -> np.ndarray:
    """L2A uint16 DN of float reflectance: ``round((r - offset) * 10000)``, NaN -> 0.

    Valid pixels are clipped to [1, 65535]: 0 is no-data, so a reflectance at or below
    ``offset`` must not turn into a hole.

    Parameters
    ----------
    reflectance : numpy.ndarray
        Float reflectance, NaN at no-data.
    offset : float
        The product's reflectance offset, -0.1 from baseline 04.00 on, else 0.

    Returns
    -------
    numpy.ndarray
        uint16 DN, 0 at no-data.
    """
    dn = np.rint((np.asarray(reflectance, dtype="float64") - offset) * round(1 / SCALE))
    valid = np.isfinite(dn)
    return np.where(valid, np.clip(np.nan_to_num(dn), 1, 65535), 0).astype("uint16")


def _write_cog(path: Path, data: np.ndarray, geobox: GeoBox, *, nodata: int) -> None:
    # COG with internal overviews, as real L2A COGs are; nearest overviews keep the SCL
    # classes and, for DN, never mix no-data into valid pixels.
    with rasterio.open(
        path,
        "w",
        driver="COG",
        width=geobox.width,
        height=geobox.height,
        count=1,
        dtype=data.dtype,
        crs=geobox.crs.to_wkt(),
        transform=geobox.affine,
        nodata=nodata,
        compress="deflate",
        blocksize=256,
        overview_resampling="nearest",
    ) as dst:
        dst.write(data, 1)


def _projection(asset: pystac.Asset, geobox: GeoBox) -> None:
    proj = ProjectionExtension.ext(asset, add_if_missing=True)
    epsg = geobox.crs.epsg
    if epsg is not None:
        proj.code = f"EPSG:{epsg}"
    else:
        proj.wkt2 = geobox.crs.to_wkt()
    proj.shape = [geobox.height, geobox.width]
    proj.transform = list(geobox.affine)[:6]


def write_catalog(
    root: str | Path,
    ref: xr.DataArray,
    *,
    mask: xr.DataArray | None = None,
    names: Sequence[str] = ("B02", "B03", "B04", "B08"),
    offset_baseline: bool = True,
    scl_name: str = "SCL",
    id_prefix: str = "S2_SIM",
) -> Path:
    """Write a Sentinel-2-like reflectance stack as a static STAC catalogue of COGs.

    Parameters
    ----------
    root : str or path-like
        Folder of the catalogue (created when missing): ``catalog.json`` and one folder
        per date holding the item JSON and its COGs.
    ref : xarray.DataArray
        Float reflectance (band, y, x) or (time, band, y, x) with a datetime64 ``time``
        coordinate (naive values are UTC), a CRS readable by rioxarray, NaN at no-data.
        A (band, y, x) array is dated by a scalar ``time`` coordinate if it has one,
        else :data:`DEFAULT_DATE`.
    mask : xarray.DataArray, optional
        Boolean cloud mask on ``ref``'s grid, (y, x) for every date or (time, y, x),
        True = cloud: written as an SCL asset per date (9, cloud high probability, where
        True; 4, vegetation, where clear; 0 where every band is no-data).
    names : sequence of str
        Asset key of each of ``ref``'s bands, in order: the L2A names (``B02``...) or
        Earth Search's (``blue``, ``green``, ``red``, ``nir``...).
    offset_baseline : bool
        Store DN as processing baseline 04.00+ does, ``(r + 0.1) * 10000`` with a
        raster offset of -0.1; False stores ``r * 10000`` with offset 0 (pre-2022).
    scl_name : str
        Asset key of the scene classification (Earth Search spells it ``scl``).
    id_prefix : str
        Item ids are ``{id_prefix}_{YYYYmmddTHHMMSS}``.

    Returns
    -------
    pathlib.Path
        The ``catalog.json`` written.

    Raises
    ------
    ValueError
        When ``names`` does not give one name per band, or ``ref`` has no CRS.
    """
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    ref, dates = _as_dates(ref)
    names = list(names)
    if len(names) != ref.sizes["band"]:
        raise ValueError(f"{len(names)} names for {ref.sizes['band']} bands")
    if ref.rio.crs is None:
        raise ValueError("ref has no CRS: write one with ref.rio.write_crs(...)")
    geobox = GeoBox((ref.sizes["y"], ref.sizes["x"]), ref.rio.transform(), ref.rio.crs.to_wkt())
    # Densified footprint: a UTM rectangle's edges curve in lon/lat, and odc-stac uses
    # the item geometry to decide which output tiles an item touches.
    footprint = geobox.footprint("EPSG:4326", npoints=10)
    bbox = list(footprint.boundingbox)
    geometry = footprint.json
    offset = BASELINE_OFFSET if offset_baseline else 0.0
    masks = None
    if mask is not None:
        masks = mask.broadcast_like(ref.isel(band=0)).transpose("time", "y", "x").values

    catalog = pystac.Catalog(
        id="xharmonise-stac-test",
        description="Simulated Sentinel-2 L2A reference written by tests/stac_catalog.py",
    )
    for t, when in enumerate(dates):
        item_id = f"{id_prefix}_{when:%Y%m%dT%H%M%S}"
        folder = root / item_id
        folder.mkdir(exist_ok=True)
        item = pystac.Item(
            id=item_id,
            geometry=geometry,
            bbox=bbox,
            datetime=when,
            properties={
                "platform": "sentinel-2a",
                "constellation": "sentinel-2",
                "instruments": ["msi"],
                "s2:processing_baseline": "05.00" if offset_baseline else "03.01",
            },
        )
        ProjectionExtension.add_to(item)
        RasterExtension.add_to(item)
        EOExtension.add_to(item)
        values = ref.isel(time=t).values
        for i, name in enumerate(names):
            path = folder / f"{name}.tif"
            _write_cog(path, to_dn(values[i], offset=offset), geobox, nodata=0)
            s2 = _s2_band(name) or _s2_band(ref["band"].values[i])
            asset = pystac.Asset(
                href=str(path),
                media_type=pystac.MediaType.COG,
                roles=["data", "reflectance"],
                title=name,
            )
            item.add_asset(name, asset)
            _projection(asset, geobox)
            RasterExtension.ext(asset).apply(
                [
                    RasterBand.create(
                        nodata=0,
                        data_type=DataType.UINT16,
                        spatial_resolution=abs(geobox.resolution.x),
                        scale=SCALE,
                        offset=offset,
                    )
                ]
            )
            if s2 is not None:
                common, centre, fwhm = _S2[s2]
                EOExtension.ext(asset).apply(
                    bands=[
                        Band.create(
                            name=name,
                            common_name=common,
                            center_wavelength=centre,
                            full_width_half_max=fwhm,
                        )
                    ]
                )
        if masks is not None:
            nodata = np.isnan(values).all(axis=0)
            scl = np.where(masks[t], SCL_CLOUD_HIGH, SCL_VEGETATION)
            scl = np.where(nodata, SCL_NODATA, scl).astype("uint8")
            path = folder / f"{scl_name}.tif"
            _write_cog(path, scl, geobox, nodata=SCL_NODATA)
            asset = pystac.Asset(
                href=str(path),
                media_type=pystac.MediaType.COG,
                roles=["data"],
                title="Scene classification map (SCL)",
            )
            item.add_asset(scl_name, asset)
            _projection(asset, geobox)
            RasterExtension.ext(asset).apply(
                [
                    RasterBand.create(
                        nodata=SCL_NODATA,
                        data_type=DataType.UINT8,
                        spatial_resolution=abs(geobox.resolution.x),
                    )
                ]
            )
        catalog.add_item(item)

    catalog.normalize_hrefs(str(root))
    # Relative asset hrefs: the folder can be moved or copied (e.g. to a device machine).
    catalog.make_all_asset_hrefs_relative()
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return root / "catalog.json"


def read_items(catalog_json: str | Path) -> list[pystac.Item]:
    """The items of a catalogue written by :func:`write_catalog`, in date order."""
    catalog = pystac.Catalog.from_file(str(catalog_json))
    items = list(catalog.get_items(recursive=True))
    return sorted(items, key=lambda item: (item.datetime, item.id))


def load(
    catalog_json: str | Path,
    bands: str | Sequence[str] | None = None,
    **kw: Any,
) -> xr.Dataset:
    """Load a catalogue written by :func:`write_catalog` with :func:`odc.stac.load`.

    Parameters
    ----------
    catalog_json : str or path-like
        The ``catalog.json`` :func:`write_catalog` returned.
    bands : str or sequence of str, optional
        Asset keys or eo common-name aliases to load; None loads every asset.
    **kw
        Passed to :func:`odc.stac.load` (``groupby=``, ``crs=``, ``resolution=``,
        ``like=``, ``geobox=``...). ``chunks`` defaults to ``{}``.

    Returns
    -------
    xarray.Dataset
        One (time, y, x) variable per band, Dask-backed unless ``chunks=None``.
    """
    # Imported here: the module imports without odc-stac, for the writer alone.
    import odc.stac

    kw.setdefault("chunks", {})
    return odc.stac.load(read_items(catalog_json), bands=bands, **kw)
