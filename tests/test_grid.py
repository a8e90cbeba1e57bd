import numpy as np
import pytest
import rioxarray  # noqa: F401
from conftest import chunks_for
from rasterio.enums import Resampling

from xharmonise import grid
from xharmonise.errors import GridError, MissingCRSError, NoOverlapError
from xharmonise.scaling import to_reflectance
from xharmonise.simulate import simulate_pair


@pytest.mark.parametrize(("resolution", "factor"), [(2.0, 5), (3.0, 3), (5.0, 2)])
def test_factor_is_the_integer_ratio(resolution, factor):
    pair = simulate_pair((150, 150), src_resolution=resolution)
    g = grid.pair_grid(pair.src, pair.ref)
    assert g.factor == factor
    assert g.src.resolution.x == pytest.approx(10.0 / factor)
    assert g.src_resolution == pytest.approx(resolution)


def test_grid_is_in_phase_with_reference_and_inside_overlap():
    pair = simulate_pair((300, 300), src_offset=(1.3, 0.7))
    g = grid.pair_grid(pair.src, pair.ref)
    ref_t, src_t = g.ref.affine, g.src.affine
    assert (src_t.c, src_t.f) == (ref_t.c, ref_t.f)
    assert (ref_t.c - pair.ref.rio.transform().c) % 10 == 0
    sl, sb, sr, st = pair.src.rio.bounds()
    rl, rb, rr, rt = g.ref.boundingbox
    assert rl >= sl and rb >= sb and rr <= sr and rt <= st
    assert (rr - rl) > (sr - sl) - 20 and g.src.shape == (g.ref.shape[0] * 5, g.ref.shape[1] * 5)


def test_in_phase_source_is_sliced_not_resampled(backend):
    pair = simulate_pair((300, 300), chunks=chunks_for(backend))
    src = to_reflectance(pair.src)
    g = grid.pair_grid(src, pair.ref)
    aligned = grid.align_source(src, g)
    assert type(aligned.data) is type(src.data)
    expected = src.sel(y=aligned["y"], x=aligned["x"])
    np.testing.assert_array_equal(aligned.values, expected.values)


def test_reprojection_agrees_with_rioxarray(backend):
    pair = simulate_pair((200, 200), seed=3, src_offset=(0.8, 1.1), chunks=chunks_for(backend))
    src = to_reflectance(pair.src)
    g = grid.pair_grid(src, pair.ref)
    aligned = grid.align_source(src, g, resampling="bilinear")
    if backend == "dask":
        assert aligned.chunks is not None
    template = aligned.isel(band=0).compute()
    eager = to_reflectance(simulate_pair((200, 200), seed=3, src_offset=(0.8, 1.1)).src)
    expected = eager.rio.reproject_match(template, resampling=Resampling.bilinear, nodata=np.nan)
    got = aligned.values
    ok = np.isfinite(got) & np.isfinite(expected.values)
    assert ok.mean() > 0.9
    np.testing.assert_allclose(got[ok], expected.values[ok], atol=1e-5)


def test_other_crs_is_reprojected():
    pair = simulate_pair((300, 300), seed=1, src_crs="EPSG:32632")
    src = to_reflectance(pair.src)
    g = grid.pair_grid(src, pair.ref)
    aligned = grid.align_source(src, g)
    assert aligned.rio.crs == pair.ref.rio.crs
    assert g.factor == 5 and np.isfinite(aligned.values).mean() > 0.5


def test_geobox_reads_rioxarray_and_refuses_bad_grids():
    pair = simulate_pair((100, 100))
    gb = grid.geobox_of(pair.src)
    assert gb.affine == pair.src.rio.transform()
    no_crs = pair.src.drop_vars("spatial_ref")
    with pytest.raises(MissingCRSError, match="write_crs"):
        grid.geobox_of(no_crs)
    with pytest.raises(GridError, match="descending x"):
        grid.geobox_of(pair.src.isel(x=slice(None, None, -1)))
    with pytest.raises(GridError, match="irregular"):
        grid.geobox_of(pair.src.isel(x=[0, 1, 3, 4, 5]))


def test_no_overlap_and_coarser_source():
    a = simulate_pair((100, 100))
    far = simulate_pair((100, 100), origin=(600000.0, 4800000.0))
    with pytest.raises(NoOverlapError):
        grid.pair_grid(a.src, far.ref)
    with pytest.raises(GridError, match="coarser"):
        grid.pair_grid(a.ref, a.src)
