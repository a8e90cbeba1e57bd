"""Cloud masks from Sen2Cor SCL and MAJA CLM products: known classes in, known mask out."""

from __future__ import annotations

import doctest

import dask.array as da
import numpy as np
import pytest
import rioxarray
import xarray as xr
from affine import Affine
from conftest import FailAfter, shared_data
from pyproj import Transformer

import xharmonise
from xharmonise import masks
from xharmonise.errors import (
    DimensionError,
    GridError,
    HarmoniseError,
    InputTypeError,
    InputValueError,
    MissingCRSError,
)
from xharmonise.masks import (
    CLM_BITS,
    CLM_BITS_NATIVE,
    SCL_CLASSES,
    SCL_CLOUD_CLASSES,
    cloud_mask_from_clm,
    cloud_mask_from_scl,
)

# A Sentinel-2 tile corner (Barbellino, UTM 32N): 20 m SCL pixels, 10 m output pixels.
X0, Y0, CRS = 580560.0, 5102120.0, "EPSG:32632"


def _raster(values: np.ndarray, res: float, backend: str, *, x0=X0, y0=Y0, crs=CRS):
    """A (1, y, x) raster as rioxarray opens one, NumPy- or Dask-backed (odd chunks)."""
    ny, nx = values.shape
    da_ = xr.DataArray(
        values[None],
        dims=("band", "y", "x"),
        coords={
            "band": [1],
            "y": y0 - res * (np.arange(ny) + 0.5),
            "x": x0 + res * (np.arange(nx) + 0.5),
        },
        attrs={"_FillValue": 0, "AREA_OR_POINT": "Area"},
    )
    if crs is not None:
        da_ = da_.rio.write_crs(crs)
    return da_.chunk({"band": 1, "y": 3, "x": 5}) if backend == "dask" else da_


def _classes(shape=(6, 8), seed=0) -> np.ndarray:
    """Every SCL class at least once, shuffled: the truth the mask is checked against."""
    n = shape[0] * shape[1]
    values = np.arange(n) % len(SCL_CLASSES)
    return np.random.default_rng(seed).permutation(values).reshape(shape).astype(np.uint8)


def _blocks(a: np.ndarray, k: int = 2) -> np.ndarray:
    return a.repeat(k, axis=0).repeat(k, axis=1)


def test_default_classes_are_the_documented_ones():
    # The decision documented in masks.py: clouds, shadows, cirrus, no data, saturated;
    # dark areas (2) and snow (11) are real surfaces.
    assert SCL_CLOUD_CLASSES == (0, 1, 3, 8, 9, 10)
    assert {SCL_CLASSES[c] for c in (8, 9, 10)} == {
        "cloud medium probability",
        "cloud high probability",
        "thin cirrus",
    }
    assert 2 not in SCL_CLOUD_CLASSES and 11 not in SCL_CLOUD_CLASSES


def test_scl_becomes_2x2_blocks_on_the_10m_grid(backend):
    values = _classes()
    scl = _raster(values, 20.0, backend)
    mask = cloud_mask_from_scl(scl)

    assert mask.dims == ("y", "x") and mask.dtype == bool
    assert isinstance(mask.data, da.Array) == (backend == "dask")
    np.testing.assert_array_equal(mask.values, _blocks(np.isin(values, SCL_CLOUD_CLASSES)))
    # Every class, one at a time: its pixels are masked iff it is a default class.
    for code in SCL_CLASSES:
        hit = mask.values[_blocks(values == code)]
        assert hit.size == 4 * (values == code).sum()
        assert (hit == (code in SCL_CLOUD_CLASSES)).all(), code
    # The 10 m grid, in phase with the 20 m one: pixel centres 5 m inside each half.
    np.testing.assert_array_equal(mask.x.values, X0 + 5.0 + 10.0 * np.arange(16))
    np.testing.assert_array_equal(mask.y.values, Y0 - 5.0 - 10.0 * np.arange(12))
    assert mask.rio.crs == scl.rio.crs
    assert mask.rio.transform() == Affine(10.0, 0.0, X0, 0.0, -10.0, Y0)
    # Input untouched, and no product attributes (such as _FillValue) leak into the mask.
    assert scl.dtype == np.uint8 and scl.shape == (1, 6, 8)
    assert "_FillValue" not in mask.attrs


@pytest.mark.parametrize("classes", [(11,), [11, 11], np.array([11]), 11])
def test_scl_custom_classes(backend, classes):
    values = _classes()
    mask = cloud_mask_from_scl(_raster(values, 20.0, backend), classes=classes)
    np.testing.assert_array_equal(mask.values, _blocks(values == 11))


def test_scl_mask_is_lazy():
    # A Dask SCL whose blocks raise when computed: building the mask must not compute.
    scl = _raster(_classes(), 20.0, "dask")
    scl = scl.copy(
        data=scl.data.map_blocks(FailAfter(0), dtype=np.uint8, meta=np.array((), np.uint8))
    )
    like = _raster(np.zeros((14, 16), np.uint8), 10.0, "numpy", x0=X0 - 10, y0=Y0 + 10)
    for mask in (
        cloud_mask_from_scl(scl),
        cloud_mask_from_scl(scl, like=like, dilate=1),
    ):
        assert isinstance(mask.data, da.Array)
        with pytest.raises(RuntimeError, match="interrupted"):
            mask.compute()


def _containing(values: np.ndarray, xs, ys, *, res=20.0, x0=X0, y0=Y0) -> np.ndarray:
    """Truth by integer arithmetic: the class of the SCL pixel containing each centre,
    255 outside the SCL."""
    out = np.full((len(ys), len(xs)), 255, np.uint8)
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            r, c = int((y0 - y) // res), int((x - x0) // res)
            if 0 <= r < values.shape[0] and 0 <= c < values.shape[1]:
                out[i, j] = values[r, c]
    return out


@pytest.mark.parametrize("shift", [10.0, 3.0], ids=["in-phase", "out-of-phase"])
def test_scl_lands_exactly_on_like(backend, shift):
    # A 10 m grid starting `shift` metres west/north of the SCL (so one row and column
    # fall outside it) and reaching 3 pixels beyond its east/south edge.
    values = _classes()
    x0, y0 = X0 - shift, Y0 + shift
    like = _raster(np.zeros((15, 19), np.uint16), 10.0, "numpy", x0=x0, y0=y0)
    mask = cloud_mask_from_scl(_raster(values, 20.0, backend), like=like)

    # Exactly like's coordinates and grid mapping.
    np.testing.assert_array_equal(mask.x.values, like.x.values)
    np.testing.assert_array_equal(mask.y.values, like.y.values)
    assert mask["spatial_ref"].attrs == like["spatial_ref"].attrs
    truth = _containing(values, like.x.values, like.y.values)
    # Outside the SCL is unknown, hence unusable: True, like class 0.
    np.testing.assert_array_equal(mask.values, np.isin(truth, (*SCL_CLOUD_CLASSES, 255)))
    assert (truth == 255).sum() == 15 * 19 - 12 * 16


def test_scl_like_in_another_crs():
    # The reference in UTM 31N while the SCL is in UTM 32N: odc-geo nearest reprojection.
    values = _classes((20, 24), seed=1)
    scl = _raster(values, 20.0, "dask")
    to31 = Transformer.from_crs(CRS, "EPSG:32631", always_xy=True)
    cx, cy = to31.transform(X0 + 240.0, Y0 - 200.0)
    x0, y0 = round(cx) - 150.0, round(cy) + 150.0
    like = _raster(np.zeros((30, 30), np.uint16), 10.0, "numpy", x0=x0, y0=y0, crs="EPSG:32631")
    mask = cloud_mask_from_scl(scl, like=like)

    assert isinstance(mask.data, da.Array)
    np.testing.assert_array_equal(mask.x.values, like.x.values)
    assert mask.rio.crs == like.rio.crs
    # Truth: the SCL pixel containing each like centre, found with pyproj.
    xx, yy = np.meshgrid(like.x.values, like.y.values)
    sx, sy = Transformer.from_crs("EPSG:32631", CRS, always_xy=True).transform(xx, yy)
    r, c = ((Y0 - sy) // 20).astype(int), ((sx - X0) // 20).astype(int)
    assert ((r >= 0) & (r < 20) & (c >= 0) & (c < 24)).all()  # like lies inside the SCL
    truth = np.isin(values[r, c], SCL_CLOUD_CLASSES)
    # GDAL's approximate transformer (error <= 0.125 pixel) may pick the neighbour for
    # centres within that distance of an SCL pixel edge: a few pixels, never more.
    assert (mask.values == truth).mean() > 0.97


def _disk_truth(seed: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within `radius` (Euclidean, in pixels) of any seed pixel, brute force."""
    out = np.zeros_like(seed)
    for i, j in zip(*np.nonzero(seed), strict=True):
        yy, xx = np.ogrid[: seed.shape[0], : seed.shape[1]]
        out |= (yy - i) ** 2 + (xx - j) ** 2 <= radius**2
    return out


@pytest.mark.parametrize("radius", [1, 2, 4, 7, 25])
def test_scl_dilation_is_a_disk_across_chunk_seams(backend, radius):
    values = np.full((10, 10), 4, np.uint8)
    values[2, 2] = 9  # a cloud at 20 m, on a Dask chunk corner (chunks of 3 x 5)
    values[7, 9] = 3  # a shadow at the east edge: the dilation stops at the border
    mask = cloud_mask_from_scl(_raster(values, 20.0, backend), dilate=radius)
    seed = _blocks(values != 4)
    np.testing.assert_array_equal(mask.values, _disk_truth(seed, radius))
    assert mask.attrs["dilation_pixels"] == radius


def _mask_of(kind: str, raster: xr.DataArray, **kw):
    return (cloud_mask_from_scl if kind == "scl" else cloud_mask_from_clm)(raster, **kw)


@pytest.mark.parametrize("kind", ["scl", "clm"])
@pytest.mark.parametrize(
    ("make", "kw", "error", "match"),
    [
        (lambda r: r.astype(np.float32), {}, InputTypeError, "masked=True"),
        (lambda r: r > 3, {}, InputTypeError, "not integer codes"),
        (lambda r: xr.concat([r, r], "band"), {}, DimensionError, "2 layers"),
        (lambda r: r.values, {}, InputTypeError, "pass an xarray.DataArray"),
        (lambda r: r.drop_vars("spatial_ref"), {}, MissingCRSError, "write_crs"),
        (lambda r: r, {"resolution": 15.0}, GridError, "divides"),
        (lambda r: r, {"resolution": 0}, InputValueError, "resolution=0.*above 0"),
        (lambda r: r, {"dilate": -1}, InputValueError, "dilate=-1.*0 to 1000"),
        (lambda r: r, {"dilate": 1.5}, InputTypeError, "dilate=1.5.*integer"),
        (lambda r: r, {"dilate": 1001}, InputValueError, "dilate=1001.*0 to 1000"),
    ],
)
def test_bad_inputs_name_the_fix(kind, make, kw, error, match):
    raster = _raster(_classes(), 20.0, "numpy")
    with pytest.raises(error, match=match) as info:
        _mask_of(kind, make(raster), **kw)
    assert isinstance(info.value, HarmoniseError)


@pytest.mark.parametrize(
    ("classes", "error", "match"),
    [
        ((12,), InputValueError, "not a SCL class"),
        ((), InputValueError, "empty"),
        (("cloud",), InputTypeError, "list of integers"),
        ("9", InputTypeError, "list of integers"),
        ((8.0,), InputTypeError, "list of integers"),
    ],
)
def test_bad_scl_classes(classes, error, match):
    with pytest.raises(error, match=match):
        cloud_mask_from_scl(_raster(_classes(), 20.0, "numpy"), classes=classes)


def test_like_coarser_than_the_mask_is_refused():
    like = _raster(np.zeros((2, 3), np.uint16), 60.0, "numpy")
    with pytest.raises(GridError, match="coarser"):
        cloud_mask_from_scl(_raster(_classes(), 20.0, "numpy"), like=like)


# --- MAJA / Theia CLM -----------------------------------------------------------------


def test_clm_bits_one_by_one(backend):
    # Every 8-bit value once, on a 10 m CLM_R1 grid: the output grid is the input's.
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    clm = _raster(values, 10.0, backend)
    mask = cloud_mask_from_clm(clm)
    assert isinstance(mask.data, da.Array) == (backend == "dask")
    np.testing.assert_array_equal(mask.values, values != 0)
    np.testing.assert_array_equal(mask.x.values, clm.x.values)
    np.testing.assert_array_equal(mask.y.values, clm.y.values)
    for b in range(8):
        one = cloud_mask_from_clm(clm, bits=(b,))
        np.testing.assert_array_equal(one.values, (values >> b) & 1 == 1)
    two = cloud_mask_from_clm(clm, bits=[1, 7])
    np.testing.assert_array_equal(two.values, (values & 0b1000_0010) != 0)


def test_clm_documented_meanings():
    # Pixels built from the MUSCATE flag meanings (CLM_BITS): MAJA sets the summary bits
    # 0 (clouds and shadows) and 1 (clouds) along with the detail bits.
    flags = {v: k for k, v in CLM_BITS.items()}
    cloud = 1 << 0 | 1 << 1 | 1 << flags["clouds detected by mono-temporal thresholds"]
    shadow = 1 << 0 | 1 << flags["shadows of clouds detected in the image"]
    thinnest = 1 << flags["thinnest clouds"]
    cirrus = 1 << 0 | 1 << 1 | 1 << flags["high clouds detected at 1.38 µm"]
    values = np.array([[0, cloud, shadow, thinnest, cirrus], [0] * 5], np.uint8)
    clm = _raster(values, 10.0, "numpy")

    def as_list(**kw):
        return cloud_mask_from_clm(clm, **kw).values[0].tolist()

    assert as_list() == [False, True, True, True, True]  # default: any flag
    assert as_list(bits=(0,)) == [False, True, True, False, True]  # MAJA's summary
    assert as_list(bits=(1,)) == [False, True, False, False, True]  # clouds, no shadows
    # The native layout moves the detail bits but keeps 0 and 1.
    assert CLM_BITS_NATIVE[0] == CLM_BITS[0] and CLM_BITS_NATIVE[1] == CLM_BITS[1]
    assert CLM_BITS_NATIVE[6] == CLM_BITS[4] == "thinnest clouds"


def test_clm_r2_is_upsampled_like_the_scl(backend):
    values = np.array([[0, 2], [32, 0]], np.uint8)
    mask = cloud_mask_from_clm(_raster(values, 20.0, backend))
    np.testing.assert_array_equal(mask.values, _blocks(values != 0))
    assert mask.rio.transform() == Affine(10.0, 0.0, X0, 0.0, -10.0, Y0)


@pytest.mark.parametrize(("bits", "match"), [((8,), "not a bit"), ((-1,), "not a bit")])
def test_bad_clm_bits(bits, match):
    with pytest.raises(InputValueError, match=match):
        cloud_mask_from_clm(_raster(_classes(), 10.0, "numpy"), bits=bits)


# --- Real Sen2Cor products (../shared/data/sen2r_barbellino) --------------------------

DATES = ["20170703", "20190723"]


def _open(kind: str, date: str, **kw) -> xr.DataArray:
    folder = shared_data("sen2r_barbellino")
    return rioxarray.open_rasterio(folder / f"S2A2A_{date}_022_Barbellino_{kind}_10.tif", **kw)


@pytest.mark.parametrize("date", DATES)
@pytest.mark.parametrize("chunks", [None, {"y": 5, "x": 7}], ids=["numpy", "dask"])
def test_real_scl_lands_on_the_boa_grid(date, chunks):
    scl = _open("SCL", date, chunks=chunks)  # 12 x 21 pixels at 20 m, uint8
    boa = _open("BOA", date)  # 24 x 42 pixels at 10 m, 11 bands
    assert scl.rio.resolution() == (20.0, -20.0) and boa.rio.resolution() == (10.0, -10.0)
    mask = cloud_mask_from_scl(scl)

    assert mask.shape == boa.shape[1:]
    np.testing.assert_array_equal(mask.x.values, boa.x.values)
    np.testing.assert_array_equal(mask.y.values, boa.y.values)
    assert mask.rio.crs == boa.rio.crs and mask.rio.transform() == boa.rio.transform()
    # 2 x 2 blocks: the cloud fraction at 10 m is the SCL's, exactly.
    in_classes = np.isin(scl.values, SCL_CLOUD_CLASSES)
    assert float(mask.mean()) == in_classes.mean()
    # Landing on the BOA with like= (a DataArray or a Dataset) gives the same mask.
    for like in (boa, boa.to_dataset(name="boa")):
        np.testing.assert_array_equal(cloud_mask_from_scl(scl, like=like).values, mask.values)


def test_real_scl_cloud_fractions():
    # The known content of the two products: 2017 has 30 medium- and 3 high-probability
    # cloud pixels among 252 (13.1 %); 2019 has none, but 3 dark-area pixels (class 2).
    m2017 = cloud_mask_from_scl(_open("SCL", "20170703"))
    assert m2017.values.sum() == 4 * 33 and float(m2017.mean()) == pytest.approx(33 / 252)
    m2019 = cloud_mask_from_scl(_open("SCL", "20190723"))
    assert not m2019.values.any()
    dark = cloud_mask_from_scl(_open("SCL", "20190723"), classes=(2,))
    assert dark.values.sum() == 4 * 3


def _patch_clouds(mask: np.ndarray, total: int, patch: int) -> int:
    """Patches holding a cloud pixel, on fit's patch grid: `ring` reference pixels in from
    the edge, ring found from the patch count fit reports (it differs for every ring)."""
    ny, nx = mask.shape
    rings = [r for r in range(8) if ((ny - 2 * r) // patch) * ((nx - 2 * r) // patch) == total]
    assert len(rings) == 1, rings
    r = rings[0]
    rows, cols = (ny - 2 * r) // patch, (nx - 2 * r) // patch
    win = mask[r : r + rows * patch, r : r + cols * patch]
    return int(win.reshape(rows, patch, cols, patch).any(axis=(1, 3)).sum())


def test_real_scl_mask_plugs_into_fit():
    # The 2017 BOA as the reference, and a 2 m "source" made of its own 10 m pixels
    # (5 x 5 each) so that the pair lines up: only the mask decides which patches go.
    boa = _open("BOA", "20170703").sel(band=[2, 3, 4, 8])
    boa = boa.assign_coords(band=["B2", "B3", "B4", "B8"])
    src = xr.DataArray(
        boa.values.repeat(5, axis=1).repeat(5, axis=2),
        dims=("band", "y", "x"),
        coords={
            "band": ["B0", "B1", "B2", "B3"],
            "y": boa.y.values[0] + 4.0 - 2.0 * np.arange(5 * boa.sizes["y"]),
            "x": boa.x.values[0] - 4.0 + 2.0 * np.arange(5 * boa.sizes["x"]),
        },
        attrs={"_FillValue": 65535},
    ).rio.write_crs(boa.rio.crs)
    mask = cloud_mask_from_scl(_open("SCL", "20170703"))

    kw = {"method": "linear", "scale": 1e-4, "patch_size": 4, "progress": False}
    clear = xharmonise.fit(src, boa, **kw)
    masked = xharmonise.fit(src, boa, mask=mask, **kw)
    total = masked.patches["total"]
    expected = _patch_clouds(mask.values, total, 4)
    assert expected > 0
    assert clear.patches["cloudy"] == 0
    assert masked.patches["cloudy"] == expected
    assert masked.patches["valid"] == clear.patches["valid"] - expected


def test_docstring_examples_run():
    result = doctest.testmod(masks, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_a_dated_scl_gives_one_mask_per_date():
    from xharmonise.simulate import simulate_series

    series = simulate_series((200, 200), seed=0, days=(-3, 2), ref_clouds=[0.3, 0.1])
    scl = xr.where(series.mask, 9, 4).astype("uint8").rio.write_crs(series.ref.rio.crs)
    masks = cloud_mask_from_scl(scl, like=series.ref)
    assert masks.dims == ("time", "y", "x")
    np.testing.assert_array_equal(masks["time"].values, series.ref["time"].values)
    for i in range(2):
        one = cloud_mask_from_scl(scl.isel(time=i), like=series.ref)
        np.testing.assert_array_equal(masks.isel(time=i).values, one.values)
    np.testing.assert_array_equal(masks.values, series.mask.values)
