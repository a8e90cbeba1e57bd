"""Sub-pixel shift estimation against the simulator's known shifts, and on a real S2 pair."""

import json

import dask.array as da
import numpy as np
import pytest
import rioxarray
import xarray as xr
from conftest import chunks_for, shared_data
from skimage.registration import phase_cross_correlation

import xharmonise
from xharmonise import coregister, grid, records
from xharmonise.coregister import ShiftEstimate
from xharmonise.errors import CoregistrationError, HarmoniseError, InputValueError
from xharmonise.scaling import to_reflectance
from xharmonise.simulate import simulate_pair

# The acceptance bound: 0.1 reference pixel (1 m at 10 m).
TOLERANCE_PX = 0.1


def _error_px(est: ShiftEstimate, shift: tuple[float, float]) -> np.ndarray:
    return np.array([est.east - shift[0], est.north - shift[1]]) / est.pixel_size


# Shifts in metres (east, north): 0.2 to 3 source pixels (2 m) in six directions, and one
# of more than a reference pixel. Every case has clouds (masked in the reference, unmasked
# in the source) and a no-data border with a cut corner; every other one is TOA.
SHIFTS = [
    (0.4, 0.0),
    (0.0, -1.0),
    (-2.0, 2.0),
    (3.6, 4.8),
    (4.2, -4.2),
    (-1.4, -5.8),
    (-13.0, 8.0),
]


@pytest.mark.parametrize("shift", SHIFTS)
def test_recovers_known_shift_with_clouds_and_nodata(shift, backend):
    pair = simulate_pair(
        (800, 800),
        seed=len(SHIFTS) + SHIFTS.index(shift),
        shift=shift,
        src_clouds=0.1,
        ref_clouds=0.15,
        nodata_border=25,
        toa=SHIFTS.index(shift) % 2 == 1,
        chunks=chunks_for(backend, 250),
    )
    est = xharmonise.estimate_shift(pair.src, pair.ref, mask=pair.mask)
    err = _error_px(est, shift)
    assert np.abs(err).max() < TOLERANCE_PX, (err, est)
    # The reported precision is of the right order (its floor: 0.02 pixel).
    assert np.hypot(*err) * est.pixel_size < max(4 * est.std_error, 0.2)
    assert est.pixel_size == 10.0
    np.testing.assert_allclose([est.east_px, est.north_px], np.array(shift) / 10 + err, atol=1e-12)
    # Per-band estimates tell the same story (they feed Harmoniser.shift).
    for east, north in est.bands.values():
        assert abs(east - shift[0]) < 1.5 and abs(north - shift[1]) < 1.5
    w = est.windows
    assert set(w["status"]) <= {"inlier", "outlier", "nodata", "cloud", "flat", "beyond_max_shift"}
    assert est.n_windows == (w["status"] == "inlier").sum() >= 3
    assert 0 < est.confidence <= 1


def test_unmasked_clouds_become_outliers_not_bias():
    shift = (2.6, -3.4)
    pair = simulate_pair((1000, 1000), seed=31, shift=shift, src_clouds=0.3)
    est = xharmonise.estimate_shift(pair.src, pair.ref)
    rejected = est.windows["status"].isin(["outlier", "beyond_max_shift"])
    assert rejected.any()
    assert est.confidence < 1.0
    assert np.abs(_error_px(est, shift)).max() < TOLERANCE_PX


def test_source_at_the_reference_resolution():
    # Factor 1 (e.g. two Sentinel-2 dates): the same estimator, no aggregation.
    shift = (4.0, -7.0)
    pair = simulate_pair(
        (240, 240), seed=2, shift=shift, src_resolution=10.0, ref_clouds=0.1, nodata_border=5
    )
    est = xharmonise.estimate_shift(pair.src, pair.ref, mask=pair.mask)
    assert np.abs(_error_px(est, shift)).max() < TOLERANCE_PX


def test_naive_phase_correlation_at_the_reference_resolution_is_biased_and_ours_is_not():
    # Why the estimate is refined: one-shot phase correlation of the degraded source with
    # the reference, window by window, reads sub-pixel shifts short (aliasing of the
    # aggregated images bends the phase of the high frequencies).
    shift = (3.0, 0.0)  # 0.3 reference pixel east
    pair = simulate_pair((800, 800), seed=4, shift=shift)
    src = to_reflectance(pair.src)
    g = grid.pair_grid(src, pair.ref)
    from xharmonise import psf

    degraded = psf.degrade_array(
        grid.align_source(src, g).values, psf.reference_sigmas(list(pair.ref["band"].values), 5), 5
    )
    ref = pair.ref.isel(y=g.ref_rows, x=g.ref_cols).values
    naive = []
    for r in range(10, 130, 32):
        for c in range(10, 130, 32):
            a, b = ref[2, r : r + 32, c : c + 32], degraded[2, r : r + 32, c : c + 32]
            s, _, _ = phase_cross_correlation(a, b, upsample_factor=100)
            naive.append(-s[1])
    ours = xharmonise.estimate_shift(pair.src, pair.ref).east_px
    assert np.mean(naive) < 0.27  # a quarter to a third short on this scene
    assert abs(ours - 0.3) < 0.02


def test_dask_source_is_read_by_window_each_chunk_once():
    pair = simulate_pair((2000, 2000), seed=5, shift=(2.0, 1.0), chunks=250)
    computed: list[tuple[int, int]] = []

    def spy(block, block_info=None):
        loc = block_info[0]["chunk-location"]
        computed.append((loc[1], loc[2]))
        return block

    src = pair.src.copy(
        data=pair.src.data.map_blocks(spy, dtype=pair.src.dtype, meta=np.empty((0, 0, 0)))
    )
    est = xharmonise.estimate_shift(src, pair.ref, window=32, max_windows=6)
    assert np.abs(_error_px(est, (2.0, 1.0))).max() < TOLERANCE_PX
    total = len(pair.src.chunks[1]) * len(pair.src.chunks[2])
    # Six windows of 32 reference pixels (160 + margins source pixels) touch at most four
    # chunks each; the rest of the image is never computed.
    assert 0 < len(set(computed)) <= 24 < total
    # Windows 160 source pixels apart share 250-pixel chunks; each is computed once.
    assert len(computed) == len(set(computed))
    assert len(est.windows) == 6  # the windows measured, not the whole grid


def test_read_budget_bounds_each_read(monkeypatch):
    pair = simulate_pair((2000, 2000), seed=5, shift=(2.0, 1.0), chunks=250)
    reads: list[int] = []
    original = coregister._compute

    def counting(arrays):
        reads.append(len(arrays))
        return original(arrays)

    monkeypatch.setattr(coregister, "_compute", counting)
    shared = xharmonise.estimate_shift(pair.src, pair.ref, window=32, max_windows=6)
    # One read of a round of 32 reference windows, then one of the 6 source windows examined.
    assert reads == [32, 6]
    # A budget below one chunk: every source window is read on its own, same result.
    monkeypatch.setattr(coregister, "_READ_BUDGET", 1)
    alone = xharmonise.estimate_shift(pair.src, pair.ref, window=32, max_windows=6)
    assert reads[2:] == [32] + [1] * 6
    assert (alone.east, alone.north) == (shared.east, shared.north)


def test_accessor_and_band_pairing_forward():
    pair = simulate_pair((600, 600), seed=6, shift=(1.0, -2.0))
    a = pair.src.harmonise.estimate_shift(pair.ref)
    b = xharmonise.estimate_shift(pair.src, pair.ref)
    assert (a.east, a.north) == (b.east, b.north)
    three = xharmonise.estimate_shift(pair.src, pair.ref, bands={"B1": "B3", "B3": "B8"})
    assert set(three.bands) == {"B3", "B8"}
    assert np.abs(_error_px(three, (1.0, -2.0))).max() < TOLERANCE_PX
    dn = simulate_pair((600, 600), seed=6, shift=(1.0, -2.0), dtype="uint16")
    scaled = xharmonise.estimate_shift(dn.src, dn.ref)
    assert np.abs(_error_px(scaled, (1.0, -2.0))).max() < TOLERANCE_PX


def test_estimate_round_trips_through_json():
    pair = simulate_pair((600, 600), seed=7, shift=(-3.0, 1.0), ref_clouds=0.2)
    est = xharmonise.estimate_shift(pair.src, pair.ref, mask=pair.mask)
    back = ShiftEstimate.from_dict(json.loads(json.dumps(est.to_dict())))
    assert (back.east, back.north, back.pixel_size) == (est.east, est.north, est.pixel_size)
    assert (back.confidence, back.std_error, back.bands) == (
        est.confidence,
        est.std_error,
        est.bands,
    )
    assert list(back.windows.columns) == list(est.windows.columns)
    np.testing.assert_array_equal(back.windows["status"], est.windows["status"])
    np.testing.assert_allclose(back.windows["east"], est.windows["east"], equal_nan=True)
    assert repr(est).startswith(f"<ShiftEstimate east={est.east:+.3f}")
    # The Model layer's record, re-exported by coregister and the package.
    assert ShiftEstimate is records.ShiftEstimate is xharmonise.ShiftEstimate
    d = est.to_dict()
    with pytest.raises(InputValueError, match="lacks 'windows'"):
        ShiftEstimate.from_dict({k: v for k, v in d.items() if k != "windows"})
    with pytest.raises(InputValueError, match="makes no estimate"):
        ShiftEstimate.from_dict(dict(d, bands={"B2": [1.0]}))


def test_too_few_windows_and_too_small_overlap_raise_with_the_fix():
    pair = simulate_pair((600, 600), seed=8)
    overcast = xr.ones_like(pair.mask)
    with pytest.raises(CoregistrationError, match="mask that covers less") as info:
        xharmonise.estimate_shift(pair.src, pair.ref, mask=overcast)
    assert isinstance(info.value, HarmoniseError)
    assert "cloud" in str(info.value)
    tiny = simulate_pair((100, 100), seed=8)
    with pytest.raises(CoregistrationError, match="smaller window= or max_shift="):
        xharmonise.estimate_shift(tiny.src, tiny.ref)
    far = simulate_pair((600, 600), seed=8, shift=(60.0, 0.0))
    with pytest.raises(CoregistrationError, match="larger max_shift="):
        xharmonise.estimate_shift(far.src, far.ref, max_shift=2.0)


@pytest.mark.realdata
def test_real_sentinel2_pair_windows_agree_with_whole_overlap_correlation():
    folder = shared_data("arosics_s2")
    # Two Sentinel-2 L1C B03 dates on the same 10 m grid (factor 1); 0 is fill.
    # The files' one band is unnamed ("1"): named, it gets B03's MTF (not the default's).
    ref = (
        rioxarray.open_rasterio(
            folder / "ref_S2A_20160608T153121_T33UUU_sub.jp2", chunks={"y": 512, "x": 512}
        )
        .rio.write_nodata(0, encoded=False)
        .assign_coords(band=["B3"])
    )
    tgt = (
        rioxarray.open_rasterio(
            folder / "tgt_S2A_20160529T153631_T33UUU_sub.jp2", chunks={"y": 512, "x": 512}
        )
        .rio.write_nodata(0, encoded=False)
        .assign_coords(band=["B3"])
    )
    est = xharmonise.estimate_shift(tgt, ref, scale=1e-4)
    assert isinstance(tgt.data, da.Array)
    inliers = est.windows[est.windows["status"] == "inlier"]
    assert len(inliers) >= 20 and est.confidence > 0.7
    # The windows agree with each other...
    assert inliers["east_px"].std() < 0.2 and inliers["north_px"].std() < 0.2
    # ...on a shift of one to two pixels...
    assert 1.0 < np.hypot(est.east_px, est.north_px) < 2.5
    # ...and with skimage's phase correlation over the largest clear-of-fill block of the
    # overlap (whole columns), tapered at its edges, as one image.
    t = to_reflectance(tgt, scale=1e-4)
    r = to_reflectance(ref, scale=1e-4)
    g = grid.pair_grid(t, r)
    a = grid.align_source(t, g).values[0]
    b = r.isel(y=g.ref_rows, x=g.ref_cols).values[0]
    cols = np.flatnonzero((np.isfinite(a) & np.isfinite(b)).all(axis=0))
    a, b = a[:, cols.min() : cols.max() + 1], b[:, cols.min() : cols.max() + 1]
    assert np.isfinite(a).all() and a.shape[1] > 1000
    taper = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
    s, _, _ = phase_cross_correlation(
        (b - b.mean()) * taper, (a - a.mean()) * taper, upsample_factor=100
    )
    whole = np.array([-s[1], s[0]])  # east, north of the target's content
    np.testing.assert_allclose([est.east_px, est.north_px], whole, atol=0.1)
