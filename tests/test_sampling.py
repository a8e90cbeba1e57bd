import numpy as np
import pytest
from conftest import chunks_for

from xharmonise import grid, psf, sampling
from xharmonise.errors import NoOverlapError, NoValidPatchesError
from xharmonise.scaling import to_reflectance
from xharmonise.simulate import simulate_pair

SIGMAS = [psf.sigma_from_mtf(psf.S2_MTF[b], 10, 2) for b in ("B2", "B3", "B4", "B8")]


def _prepare(pair, patch_size=16, ring=2):
    src = to_reflectance(pair.src)
    ref = to_reflectance(pair.ref)
    g = grid.pair_grid(src, ref)
    aligned = grid.align_source(src, g)
    ref_c = ref.isel(y=g.ref_rows, x=g.ref_cols)
    mask = pair.mask.isel(y=g.ref_rows, x=g.ref_cols)
    coarse = sampling.reduce_to_reference(aligned, ref_c, mask, factor=5, sigmas=SIGMAS)
    index = sampling.patch_validity(coarse, patch_size=patch_size, ring=ring)
    return g, aligned, coarse, index


@pytest.fixture(scope="module")
def cloudy_pair():
    return simulate_pair((800, 800), seed=11, src_clouds=0.0, ref_clouds=0.25, nodata_border=40)


def test_sampled_patches_have_no_nodata_and_their_clouds_are_masked_per_pixel(backend):
    pair = simulate_pair(
        (800, 800), seed=11, ref_clouds=0.25, nodata_border=40, chunks=chunks_for(backend)
    )
    g, aligned, coarse, index = _prepare(pair)
    counts = index.counts
    assert counts["valid"] > 5 and counts["nodata"] > 0 and counts["cloudy"] > 0
    assert counts["partial"] > 0
    train, test = sampling.split_patches(index, seed=0)
    cells = np.concatenate([train, test])
    assert len(cells) == counts["valid"]
    truth_mask = pair.truth.ref_clouds.isel(y=g.ref_rows, x=g.ref_cols).values
    patches = sampling.gather(index, cells, coarse=coarse, src=aligned, factor=5, margin=8)
    assert np.isfinite(patches.src).all() and np.isfinite(patches.src_full).all()
    r0, c0 = index.origin(cells[:, 0], cells[:, 1])
    for k, (r, c) in enumerate(zip(r0, c0, strict=True)):
        cloud = truth_mask[r : r + 16, c : c + 16]
        labelled = np.isfinite(patches.ref[k]).all(axis=0)
        # Every cloudy pixel is masked; at least MIN_CLEAR of the patch is labelled.
        assert not (cloud & labelled).any()
        assert labelled.mean() >= sampling.MIN_CLEAR
        # The NaNs are exactly the unclear pixels, all bands at once.
        np.testing.assert_array_equal(np.isnan(patches.ref[k]).any(axis=0), ~labelled)
        np.testing.assert_array_equal(labelled, index.clear[r : r + 16, c : c + 16])
    # Every patch rejected for cloud really is mostly cloudy.
    for r, c in np.argwhere(index.cloudy):
        (rr,), (cc,) = index.origin(np.array([r]), np.array([c]))
        assert truth_mask[rr : rr + 16, cc : cc + 16].mean() > 1 - sampling.MIN_CLEAR


def test_cloud_margin_masks_the_pixels_next_to_a_cloud():
    ok = np.ones((40, 40), bool)
    cloud = np.zeros((40, 40), bool)
    cloud[20, 20] = True
    coarse = sampling.Coarse(ok, ok, cloud, np.zeros((1, 40, 40)), np.zeros((1, 40, 40)))
    for margin, masked in ((0, 1), (1, 5), (2, 13)):
        index = sampling.patch_validity(coarse, patch_size=8, ring=0, cloud_margin=margin)
        assert (~index.clear).sum() == masked  # a disk: 1, 1 + 4, 1 + 4 + 4 + 4
        assert index.counts["valid"] == 25 and index.counts["partial"] == 1


def test_numpy_and_dask_give_identical_samples(cloudy_pair):
    lazy = simulate_pair((800, 800), seed=11, ref_clouds=0.25, nodata_border=40, chunks=131)
    _, _, c1, i1 = _prepare(cloudy_pair)
    _, _, c2, i2 = _prepare(lazy)
    np.testing.assert_array_equal(i1.valid, i2.valid)
    np.testing.assert_allclose(c1.src, c2.src, rtol=1e-5)  # summation order differs
    np.testing.assert_array_equal(c1.ref, c2.ref)


def test_split_is_reproducible_and_seeded(cloudy_pair):
    _, _, _, index = _prepare(cloudy_pair)
    a_train, a_test = sampling.split_patches(index, seed=3)
    b_train, b_test = sampling.split_patches(index, seed=3)
    c_train, _ = sampling.split_patches(index, seed=4)
    np.testing.assert_array_equal(a_train, b_train)
    np.testing.assert_array_equal(a_test, b_test)
    assert not np.array_equal(a_train, c_train)
    n = index.counts["valid"]
    assert len(a_test) == max(1, round(0.1 * n)) and len(a_train) + len(a_test) == n
    assert not {tuple(x) for x in a_train} & {tuple(x) for x in a_test}


def test_full_resolution_patches_match_the_coarse_ones(cloudy_pair):
    _, aligned, coarse, index = _prepare(cloudy_pair)
    cells, _ = sampling.split_patches(index, seed=0, max_patches=4)
    margin = 10  # the whole validated ring: degrade_array wants multiples of the factor
    p = sampling.gather(index, cells, coarse=coarse, src=aligned, factor=5, margin=margin)
    assert p.src_full.shape == (len(cells), 4, 16 * 5 + 2 * margin, 16 * 5 + 2 * margin)
    # Degrading the full-resolution patch (with its margin) gives back the coarse patch.
    for k in range(len(cells)):
        full = psf.degrade_array(p.src_full[k].astype(np.float64), SIGMAS, 5)
        np.testing.assert_allclose(full[:, 2:18, 2:18], p.src[k], rtol=1e-5)


def test_all_cloudy_raises_with_counts():
    pair = simulate_pair((400, 400), seed=2)
    src, ref = to_reflectance(pair.src), to_reflectance(pair.ref)
    g = grid.pair_grid(src, ref)
    aligned = grid.align_source(src, g)
    ref_c = ref.isel(y=g.ref_rows, x=g.ref_cols)
    cloud = ref_c.isel(band=0) > -1  # everything flagged
    coarse = sampling.reduce_to_reference(aligned, ref_c, cloud, factor=5, sigmas=SIGMAS)
    with pytest.raises(NoValidPatchesError, match="25% clear of cloud") as err:
        sampling.patch_validity(coarse, patch_size=16)
    assert err.value.total > 0 and err.value.cloudy == err.value.total


def test_overlap_smaller_than_a_patch():
    ok = np.ones((20, 20), bool)
    coarse = sampling.Coarse(ok, ok, None, np.zeros((1, 20, 20)), np.zeros((1, 20, 20)))
    with pytest.raises(NoOverlapError, match="smaller than one patch"):
        sampling.patch_validity(coarse, patch_size=32)
