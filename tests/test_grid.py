import json

import numpy as np
import pytest
import rioxarray  # noqa: F401
from conftest import chunks_for
from rasterio.enums import Resampling

from xharmonise import grid, records
from xharmonise.errors import GridError, InputValueError, MissingCRSError, NoOverlapError
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


def test_translate_moves_coords_and_transform_not_values(backend):
    pair = simulate_pair((100, 100), chunks=chunks_for(backend, 40))
    src = pair.src
    moved = grid.translate(src, 3.5, -1.25)
    assert type(moved.data) is type(src.data)
    np.testing.assert_array_equal(moved["x"].values, src["x"].values + 3.5)
    np.testing.assert_array_equal(moved["y"].values, src["y"].values - 1.25)
    t0, t1 = src.rio.transform(), moved.rio.transform()
    assert (t1.c - t0.c, t1.f - t0.f) == (3.5, -1.25)
    assert grid.geobox_of(moved).affine == t1
    assert moved.odc.geobox.affine == t1
    np.testing.assert_array_equal(moved.values, src.values)
    assert src.rio.transform() == t0  # the input is not modified
    ds = grid.translate(src.to_dataset(name="v"), 3.5, -1.25)
    assert ds.rio.transform() == t1


def test_translate_converts_a_shift_given_in_another_crs():
    pair = simulate_pair((100, 100), seed=1, src_crs="EPSG:32632")
    moved = grid.translate(pair.src, 10.0, 0.0, crs="EPSG:32631")
    # Here UTM 32 is rotated (grid convergence) and scaled (0.3 %) relative to UTM 31: 10 m
    # east in one is about 10 m, mostly east, in the other.
    dx = float(moved["x"][0] - pair.src["x"][0])
    dy = float(moved["y"][0] - pair.src["y"][0])
    assert np.hypot(dx, dy) == pytest.approx(10.0, rel=1e-2)
    assert dx > 9.0 and abs(dy) > 0.1


def test_pair_grid_round_trips_through_json_with_its_place_in_the_reference():
    pair = simulate_pair((300, 300), seed=4, src_offset=(1.3, 0.7))
    # A source that covers the reference's lower right part: the grid starts inside it.
    g = grid.pair_grid(pair.src.isel(y=slice(62, None), x=slice(41, None)), pair.ref)
    whole = pair.ref.rio.transform()
    rows = (whole.f - g.ref.affine.f) / 10
    cols = (g.ref.affine.c - whole.c) / 10
    assert (g.ref_rows.start, g.ref_cols.start) == (rows, cols) and rows > 0 and cols > 0
    text = json.dumps(g.to_json())
    back = grid.PairGrid.from_json(json.loads(text))
    assert back == g
    assert (back.ref_rows, back.ref_cols) == (g.ref_rows, g.ref_cols)
    assert back.src.affine == g.src.affine and back.src.shape == g.src.shape
    assert grid.PairGrid is records.PairGrid  # the Model layer's record, re-exported here


def test_pair_grid_from_json_refuses_incomplete_descriptions():
    pair = simulate_pair((100, 100))
    g = grid.pair_grid(pair.src, pair.ref)
    d = g.to_json()
    with pytest.raises(InputValueError, match="lacks 'ref_rows'"):
        grid.PairGrid.from_json({k: v for k, v in d.items() if k != "ref_rows"})
    with pytest.raises(InputValueError, match="factor 0 is not a positive integer"):
        grid.PairGrid.from_json(dict(d, factor=0))
    with pytest.raises(InputValueError, match="makes no grid"):
        grid.PairGrid.from_json(dict(d, ref_shape=[20]))
    with pytest.raises(InputValueError, match="not a dict"):
        grid.PairGrid.from_json(json.dumps(d))
