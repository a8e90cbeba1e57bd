import numpy as np
import pytest
import rioxarray
import xarray as xr
from conftest import chunks_for

from xharmonise.scaling import to_reflectance
from xharmonise.simulate import simulate_pair


def test_deterministic_by_seed():
    a = simulate_pair((200, 200), seed=7)
    b = simulate_pair((200, 200), seed=7)
    c = simulate_pair((200, 200), seed=8)
    np.testing.assert_array_equal(a.src.values, b.src.values)
    np.testing.assert_array_equal(a.ref.values, b.ref.values)
    assert not np.allclose(a.src.values, c.src.values)


def test_chunked_equals_unchunked():
    kw = dict(seed=1, src_clouds=0.2, ref_clouds=0.2, nodata_border=12, toa=True, shift=(3, -1))
    eager = simulate_pair((300, 300), **kw)
    lazy = simulate_pair((300, 300), chunks=77, **kw)
    assert lazy.src.chunks is not None and lazy.ref.chunks is not None
    for name in ("src", "ref", "mask"):
        np.testing.assert_array_equal(
            getattr(lazy, name).values, getattr(eager, name).values, err_msg=name
        )
    np.testing.assert_array_equal(lazy.truth.reflectance.values, eager.truth.reflectance.values)
    np.testing.assert_array_equal(lazy.truth.src_clouds.values, eager.truth.src_clouds.values)


def test_georeferencing_and_footprint():
    pair = simulate_pair((250, 300))
    assert pair.src.rio.crs == pair.ref.rio.crs
    assert pair.src.rio.resolution() == (2.0, -2.0)
    assert pair.ref.rio.resolution() == (10.0, -10.0)
    sl, sb, sr, st = pair.src.rio.bounds()
    rl, rb, rr, rt = pair.ref.rio.bounds()
    assert rl < sl and rb < sb and rr > sr and rt > st


def test_toc_source_is_the_true_affine_map_of_the_truth():
    pair = simulate_pair((300, 300), seed=2)
    mapping = pair.truth.mapping
    src = pair.src.values.reshape(4, -1)
    harmonised = mapping[:, :4] @ src + mapping[:, 4:]
    truth = pair.truth.reflectance.values.reshape(4, -1)
    # Residual = source noise (0.003) through the inverse mixing; far below the signal.
    rmse = np.sqrt(np.mean((harmonised - truth) ** 2, axis=1))
    assert (rmse < 0.006).all()
    assert (np.sqrt(np.mean((src - truth) ** 2, axis=1)) > 2 * rmse).any()


def test_shift_displaces_source_content_in_world_coordinates():
    # 4 m east = 2 source pixels: content seen at column c is that of column c - 2.
    base = simulate_pair((200, 200), seed=5).truth.reflectance.values
    moved = simulate_pair((200, 200), seed=5, shift=(4.0, 0.0)).truth.reflectance.values
    np.testing.assert_array_equal(moved[:, :, 2:], base[:, :, :-2])
    # 2 m north = 1 pixel: row r shows what row r + 1 showed (rows go south).
    north = simulate_pair((200, 200), seed=5, shift=(0.0, 2.0)).truth.reflectance.values
    np.testing.assert_array_equal(north[:, :-1, :], base[:, 1:, :])


def test_reference_is_mtf_blurred_truth():
    pair = simulate_pair((500, 500), seed=4)
    ref = pair.ref.values
    # The reference is smooth: less energy at high frequency than an aggregated mean.
    truth = pair.truth.reflectance.values[:, :, :].reshape(4, 100, 5, 100, 5).mean(axis=(2, 4))
    crop = ref[:, 8:108, 8:108]
    d_ref = np.abs(np.diff(crop, axis=2)).mean()
    d_box = np.abs(np.diff(truth, axis=2)).mean()
    assert d_ref < d_box
    np.testing.assert_allclose(crop.mean(axis=(1, 2)), truth.mean(axis=(1, 2)), atol=0.01)


def test_clouds_and_nodata(backend):
    pair = simulate_pair(
        (400, 400),
        seed=6,
        src_clouds=0.2,
        ref_clouds=0.2,
        nodata_border=20,
        chunks=chunks_for(backend),
    )
    mask = pair.mask.values
    assert mask.dtype == bool and 0.02 < mask.mean() < 0.5
    ref = pair.ref.values
    assert ref[0][mask].mean() > ref[0][~mask].mean() + 0.2
    src_clouds = pair.truth.src_clouds.values
    assert 0.02 < src_clouds.mean() < 0.5
    src = pair.src.values
    assert np.isnan(src[:, :20]).all() and np.isnan(src[:, :, -20:]).all()
    assert np.isfinite(src[:, 200, 200]).all()


def test_integer_products_round_trip_to_reflectance():
    flt = simulate_pair((200, 200), seed=9, nodata_border=10)
    dn = simulate_pair((200, 200), seed=9, nodata_border=10, dtype="uint16")
    assert dn.src.dtype == np.uint16 and dn.ref.dtype == np.uint16
    assert dn.src.rio.nodata == 0 and dn.src.attrs["scale_factor"] == 1e-4
    assert dn.ref.attrs["add_offset"] == -0.1
    for a, b in ((dn.src, flt.src), (dn.ref, flt.ref)):
        back = to_reflectance(a).values
        np.testing.assert_array_equal(np.isnan(back), np.isnan(b.values))
        np.testing.assert_allclose(back, b.values, atol=0.6e-4, equal_nan=True)


def test_other_crs_source():
    pair = simulate_pair((300, 300), seed=1, src_crs="EPSG:32632")
    assert pair.src.rio.crs.to_epsg() == 32632 and pair.ref.rio.crs.to_epsg() == 32631
    footprint = pair.src.rio.transform_bounds("EPSG:32631")
    rl, rb, rr, rt = pair.ref.rio.bounds()
    assert rl < footprint[0] and rr > footprint[2] and rb < footprint[1] and rt > footprint[3]


def test_bands_subset():
    pair = simulate_pair((100, 100), bands=("B2", "B3", "B4"))
    assert list(pair.src["band"].values) == ["B0", "B1", "B2"]
    assert list(pair.ref["band"].values) == ["B2", "B3", "B4"]
    assert pair.truth.mapping.shape == (3, 4)


def test_geotiff_round_trip(tmp_path):
    pair = simulate_pair((100, 100), seed=2, ref_clouds=0.3)
    paths = pair.to_geotiff(tmp_path)
    src = rioxarray.open_rasterio(paths["src"])
    assert src.rio.crs == pair.src.rio.crs
    assert src.rio.transform() == pair.src.rio.transform()
    np.testing.assert_allclose(src.values, pair.src.values)
    mask = rioxarray.open_rasterio(paths["mask"])
    np.testing.assert_array_equal(mask.values[0].astype(bool), pair.mask.values)


def test_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="dtype"):
        simulate_pair((50, 50), dtype="int8")


def test_dataarrays_are_well_formed():
    pair = simulate_pair((100, 100))
    assert isinstance(pair.src, xr.DataArray) and pair.src.dims == ("band", "y", "x")
    assert pair.mask.dims == ("y", "x")


def test_hashing_a_few_distinct_keys_by_lattice_gives_the_direct_hash():
    # The simulator hashes each distinct key of a block once (its bounding box) when
    # pixels share keys: the values must be those of hashing every pixel's key.
    from xharmonise.simulate import _hash, _hash_keys, _lattice

    rng = np.random.default_rng(0)
    y, x = np.mgrid[-300:300, 1000:1400]
    cells = [(np.floor(x / 7.0), np.floor(y / 11.0), 2), (y // 50, 5, x // 3), (x % 9, y % 4)]
    for keys in cells:
        ints = [np.asarray(k).astype(np.int64) for k in keys]
        assert _lattice(ints) is not None  # the fast path is taken
        np.testing.assert_array_equal(_hash(7, 3, *keys), _hash_keys(7, 3, ints))
    # Keys as many as pixels, or too few pixels: hashed directly.
    assert _lattice([y.astype(np.int64), x.astype(np.int64)]) is None
    assert _lattice([rng.integers(0, 4, (10, 10))]) is None


def test_covers_left_out_change_exactly_their_pixels():
    # Water is the only cover with NIR below 0.03; bright membrane roofs the only one with
    # blue above 0.33 (their constant 0.35; bright soil tops out near 0.30).
    full = simulate_pair((250, 250), seed=0)
    truth = full.truth.reflectance
    water = (truth.sel(band="B8") < 0.03).values
    bright_roof = (truth.sel(band="B2") > 0.33).values
    assert water.any() and bright_roof.any()
    for without, where in (
        (("water",), water),
        (("bright_roof",), bright_roof),
        (("water", "bright_roof"), water | bright_roof),
    ):
        part = simulate_pair((250, 250), seed=0, without=without)
        changed = (part.truth.reflectance != truth).any("band").values
        np.testing.assert_array_equal(changed, where, err_msg=str(without))
        new = part.truth.reflectance
        assert not (new.sel(band="B8") < 0.03).any() or "water" not in without
        assert not (new.sel(band="B2") > 0.33).any() or "bright_roof" not in without
    # Every roof, and roads, go too; the default leaves the scene as it is.
    bare = simulate_pair((250, 250), seed=0, without=("roof", "road")).truth.reflectance
    assert not ((bare.sel(band="B2") > 0.19) & (bare.sel(band="B8") < 0.25)).any()  # grey
    untouched = simulate_pair((250, 250), seed=0, without=())
    np.testing.assert_array_equal(untouched.src.values, full.src.values)


def test_covers_left_out_stay_lazy_and_chunk_independent():
    kw = dict(seed=2, without=("water", "roof"), toa=True)
    eager = simulate_pair((200, 200), **kw)
    lazy = simulate_pair((200, 200), chunks=64, **kw)
    for name in ("src", "ref"):
        np.testing.assert_array_equal(getattr(lazy, name).values, getattr(eager, name).values)


def test_unknown_or_all_covers_are_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown land cover.*'lava'.*'bright_roof'"):
        simulate_pair((50, 50), without=("lava",))
    classes = ("water", "crop", "forest", "soil", "grass", "urban", "bright_soil")
    with pytest.raises(ValueError, match="every parcel class"):
        simulate_pair((50, 50), without=classes)
