"""Property-based tests (hypothesis) of the sampling and grid arithmetic."""

import numpy as np
import rioxarray  # noqa: F401
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from xharmonise import grid, sampling


@settings(max_examples=60, deadline=None)
@given(
    bad=arrays(bool, st.tuples(st.integers(8, 40), st.integers(8, 40)), elements=st.booleans()),
    size=st.integers(2, 8),
    ring=st.integers(0, 3),
    grow=st.integers(0, 3),
)
def test_patch_any_equals_brute_force(bad, size, ring, grow):
    ny, nx = bad.shape
    rows, cols = (ny - 2 * ring) // size, (nx - 2 * ring) // size
    if rows < 1 or cols < 1:
        return
    got = sampling._patch_any(bad, size, ring, grow)
    assert got.shape == (rows, cols)
    for i in range(rows):
        for j in range(cols):
            r0, c0 = ring + i * size - grow, ring + j * size - grow
            window = bad[max(r0, 0) : r0 + size + 2 * grow, max(c0, 0) : c0 + size + 2 * grow]
            assert got[i, j] == window.any()


@settings(max_examples=40, deadline=None)
@given(
    valid=arrays(bool, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.booleans()),
    fraction=st.floats(0.0, 0.5),
    seed=st.integers(0, 2**31),
)
def test_split_is_a_partition_of_valid_patches(valid, fraction, seed):
    index = sampling.PatchIndex(valid, ~valid, np.zeros_like(valid), 32, 0)
    train, test = sampling.split_patches(index, test_fraction=fraction, seed=seed)
    cells = {tuple(c) for c in np.concatenate([train, test]).reshape(-1, 2)}
    assert cells == {tuple(c) for c in np.argwhere(valid)}
    assert len(cells) == len(train) + len(test)
    if valid.sum() >= 2:
        assert len(train) >= 1 and len(test) >= 1


def _raster(res: float, x0: float, y0: float, ny: int, nx: int) -> xr.DataArray:
    da = xr.DataArray(
        np.zeros((1, ny, nx), np.float32),
        dims=("band", "y", "x"),
        coords={
            "band": ["b"],
            "y": y0 - res * (np.arange(ny) + 0.5),
            "x": x0 + res * (np.arange(nx) + 0.5),
        },
    )
    return da.rio.write_crs("EPSG:32631")


@settings(max_examples=60, deadline=None)
@given(
    src_res=st.sampled_from([1.0, 2.0, 2.5, 3.0, 5.0, 10.0]),
    dx=st.floats(0, 50),
    dy=st.floats(0, 50),
    n=st.integers(60, 200),
)
def test_pair_grid_is_in_phase_and_inside_both(src_res, dx, dy, n):
    ref = _raster(10.0, 500000.0, 4800000.0, 80, 80)
    src = _raster(src_res, 500000.0 + dx, 4800000.0 - dy, n, n)
    g = grid.pair_grid(src, ref)
    assert g.factor == max(1, round(10.0 / src_res))
    t = g.ref.affine
    # Phase: the crop starts on a reference pixel edge.
    assert abs(((t.c - 500000.0) / 10.0) - round((t.c - 500000.0) / 10.0)) < 1e-9
    assert abs(((4800000.0 - t.f) / 10.0) - round((4800000.0 - t.f) / 10.0)) < 1e-9
    # Whole reference pixels inside the source footprint and inside the reference.
    # pair_grid treats edges closer than _PIXEL_TOL reference pixels as coincident
    # (float noise in transforms read from files): the same tolerance applies here.
    tol = grid._PIXEL_TOL * 10.0
    left, bottom, right, top = g.ref.boundingbox
    assert left >= 500000.0 + dx - tol and top <= 4800000.0 - dy + tol
    assert right <= 500000.0 + dx + n * src_res + tol
    assert bottom >= 4800000.0 - dy - n * src_res - tol
    assert right <= 500800.0 + tol and bottom >= 4799200.0 - tol
    assert g.src.shape == (g.ref.shape[0] * g.factor, g.ref.shape[1] * g.factor)
