"""Figures and the HTML report, from real (small, quickly) fitted models."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
from conftest import chunks_for
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import QuadMesh
from PIL import Image

import xharmonise
from xharmonise import plot
from xharmonise.errors import BandMismatchError, GridError, HarmoniseError, InputValueError
from xharmonise.plot.figures import shift_estimates
from xharmonise.simulate import simulate_pair

SIZE = 400  # source pixels: 80 x 80 reference pixels, 16 patches of 16 x 16
ALL_SCATTERS = {f"scatter_{b}" for b in ("B2", "B3", "B4", "B8")}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _pair(chunks: int | None = None):
    # The paper's hard case, small: TOA source, unmasked clouds, a 3.6 m shift.
    return simulate_pair(
        (SIZE, SIZE), seed=0, toa=True, src_clouds=0.05, shift=(3.0, -2.0), chunks=chunks
    )


def _fit(pair, method: str, **kw):
    with dask.config.set(scheduler="synchronous"):
        return xharmonise.fit(
            pair.src, pair.ref, mask=pair.mask, method=method, patch_size=16, progress=False, **kw
        )


@pytest.fixture(scope="module")
def pair():
    return _pair()


@pytest.fixture(scope="module")
def bcnet(pair):
    # A few iterations are enough: the report shows whatever the model learned.
    return _fit(pair, "bcnet", variance=True, iterations=20)


@pytest.fixture(scope="module")
def bcnet_prediction(pair, bcnet):
    # NumPy-backed, so computed here once for the tests that share it.
    return xharmonise.predict(pair.src, bcnet)


@pytest.fixture(scope="module")
def calibnet(pair):
    return _fit(pair, "calibnet", iterations=10)


@pytest.fixture(scope="module")
def linear(pair):
    return _fit(pair, "linear")


def _images(html: str) -> list[bytes]:
    """Decoded bytes of every <img> of the page; fails on any non-data source."""
    sources = re.findall(r"<img\b[^>]*\bsrc=['\"]([^'\"]*)['\"]", html)
    assert len(sources) == html.count("<img"), "an <img> without a quoted src"
    out = []
    for src in sources:
        assert src.startswith("data:image/png;base64,"), src[:60]
        out.append(base64.b64decode(src.split(",", 1)[1], validate=True))
    return out


def _assert_self_contained(html: str) -> None:
    assert not re.search(r"https?:", html, re.IGNORECASE)
    assert not re.search(r"<(script|link|iframe|object|embed)\b", html, re.IGNORECASE)
    assert "url(" not in html and "@import" not in html
    for href in re.findall(r"href=['\"]([^'\"]*)['\"]", html):
        assert href.startswith("#"), href  # in-page anchors only


def _valid_png(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(data)) as im:
        im.verify()
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.size


def _pngs(folder: Path) -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_bcnet_report_is_self_contained(tmp_path, pair, bcnet, bcnet_prediction):
    out = plot.report(bcnet, tmp_path / "bcnet.html", src=pair.src, prediction=bcnet_prediction)

    assert out == tmp_path / "bcnet.html"
    html = out.read_text(encoding="utf-8")
    _assert_self_contained(html)
    files = _pngs(tmp_path / "bcnet_files")
    expected = {"metrics", "loss_curves", "filters", "rgb_crop", "variance_map", "reliability"}
    expected |= ALL_SCATTERS
    assert set(files) == expected
    embedded = _images(html)
    # Every figure is both embedded and on disk, byte for byte.
    assert sorted(embedded) == sorted(files.values())
    for data in embedded:
        width, height = _valid_png(data)
        assert width > 300 and height > 200
    # The before/after crop is shown at full resolution: two 400-pixel panels at least.
    assert _valid_png(files["rgb_crop"])[0] >= 2 * SIZE
    for text in ("bcnet with variance head", "cpu", "Provenance", "rows 0:400, cols 0:400"):
        assert text in html
    # The metrics table holds the model's numbers.
    rmse = float(bcnet.metrics.sel(band="B8", metric="rmse", stage="model"))
    assert f"{rmse:.4f}" in html


def test_linear_report_says_there_is_no_history(tmp_path, pair, linear):
    prediction = xharmonise.predict(pair.src, linear)
    out = plot.report(
        linear, tmp_path / "linear.html", src=pair.src, prediction=prediction, title="Linear <test>"
    )

    html = out.read_text(encoding="utf-8")
    _assert_self_contained(html)
    assert "No training history" in html and "closed form" in html
    assert "<title>Linear &lt;test&gt;</title>" in html  # escaped, not injected
    # No loss curves, no filters (bcnet only), no variance map (no variance head); the
    # reliability of its empirical σ².
    expected = {"metrics", "rgb_crop", "reliability"} | ALL_SCATTERS
    assert set(_pngs(tmp_path / "linear_files")) == expected
    assert len(_images(html)) == 7
    assert "predict with with_applicability=True" in html


def test_report_without_image(tmp_path, calibnet):
    out = plot.report(calibnet, tmp_path / "r.html")

    html = out.read_text(encoding="utf-8")
    _assert_self_contained(html)
    assert "No image was given" in html
    expected = {"metrics", "loss_curves", "reliability"} | ALL_SCATTERS
    assert set(_pngs(tmp_path / "r_files")) == expected


def test_report_shows_the_calibration_and_the_applicability_map(tmp_path, pair, bcnet):
    window = pair.src.isel(y=slice(0, 200), x=slice(0, 200))
    prediction = xharmonise.predict(window, bcnet, with_applicability=True)
    out = plot.report(bcnet, tmp_path / "u.html", src=window, prediction=prediction)

    html = out.read_text(encoding="utf-8")
    _assert_self_contained(html)
    files = _pngs(tmp_path / "u_files")
    assert {"reliability", "variance_map", "applicability_map"} <= set(files)
    assert sorted(_images(html)) == sorted(files.values())
    # The calibration table holds the model's coverage, before and after, per band.
    scores = bcnet.calibration_scores
    assert "Calibration of σ²" in html and "±1.96σ (expect 0.950)" in html
    for stage in ("before", "after"):
        value = float(scores.sel(band="B8", measure="coverage_1.96", stage=stage))
        assert f"<td>{value:.3f}</td>" in html
    assert f"Gaussian mixture of {bcnet.domain.pixels} source pixels" in html


def test_reliability_diagram_plots_the_stored_coverage(bcnet, linear):
    for model in (bcnet, linear):
        fig = plot.reliability(model)
        scores = model.calibration_scores
        assert [ax.get_title() for ax in fig.axes if ax.get_title()] == list(model.ref_bands)
        for ax, band in zip(fig.axes, model.ref_bands, strict=False):
            lines = {line.get_label(): line for line in ax.get_lines()}
            np.testing.assert_allclose(
                lines["calibrated"].get_xdata(), lines["calibrated"].get_ydata()
            )
            for stage in ("before", "after"):
                expected = scores.sel(band=band, stage=stage).values[:3]
                np.testing.assert_array_equal(lines[stage].get_ydata(), expected)
                np.testing.assert_allclose(lines[stage].get_xdata(), [0.6827, 0.95, 0.9901])


def test_applicability_map_outlines_the_pixels_outside_the_domain(pair, linear):
    out = xharmonise.predict(pair.src, linear, with_applicability=True)
    values = out["applicability"].values.copy()
    values[:50, :50] = 1e-6  # a block outside the domain
    crop = plot.crops.compute_crop(
        None, out.assign(applicability=(("y", "x"), values)), need_src=False,
        need_applicability=True,
    )  # fmt: skip
    fig = plot.crops.draw_applicability(crop)
    ax = fig.axes[0]
    assert ax.get_images()[0].norm.__class__.__name__ == "LogNorm"
    share = float((values < 1e-3).mean())
    assert f"{share:.1%} of the window" in ax.get_title()
    assert ax.collections  # the red outline
    with pytest.raises(InputValueError, match="with_applicability=True"):
        plot.crops.compute_crop(None, out.drop_vars("applicability"), need_src=False,
                                need_applicability=True)  # fmt: skip


def test_a_model_saved_before_calibration_and_applicability_says_so(tmp_path):
    old = xharmonise.load(Path(__file__).parent / "data" / "model-v2-bcnet.safetensors")
    html = plot.report(old, tmp_path / "old.html").read_text(encoding="utf-8")
    assert "no calibration diagnostics" in html and "saved before applicability existed" in html
    assert "saved before fit recorded its sampling options" in html
    assert "reliability" not in _pngs(tmp_path / "old_files")
    with pytest.raises(InputValueError, match="fit it again"):
        plot.reliability(old)


def test_the_summary_lists_the_sampling_options_fit_recorded(tmp_path, linear):
    html = plot.report(linear, tmp_path / "r.html").read_text(encoding="utf-8")
    s = linear.sampling
    assert s is not None
    assert (
        f"patches of {s['patch_size']} reference pixels, {s['test_fraction']:g} held out for "
        f"testing, no cap, seed {s['seed']}"
    ) in html


def test_saved_model_and_rerun_replacing_stale_figures(tmp_path, bcnet, linear):
    # The CLI reports models read back from disk.
    loaded = xharmonise.load(bcnet.save(tmp_path / "m.safetensors"))
    path = tmp_path / "same.html"
    html = plot.report(loaded, path).read_text(encoding="utf-8")
    assert "filters" in _pngs(tmp_path / "same_files")
    assert html.count("<img") == len(_pngs(tmp_path / "same_files"))
    (tmp_path / "same_files" / "notes.txt").write_text("mine")
    plot.report(linear, path)
    assert "filters" not in _pngs(tmp_path / "same_files")
    assert (tmp_path / "same_files" / "notes.txt").read_text() == "mine"  # not ours: kept


def test_variance_map_only_with_a_variance_prediction(tmp_path, pair, bcnet, bcnet_prediction):
    # What predict(..., with_variance=False) returns, without predicting again.
    without = bcnet_prediction.drop_vars("variance")
    out = plot.report(bcnet, tmp_path / "nv.html", src=pair.src, prediction=without)

    assert "variance_map" not in _pngs(tmp_path / "nv_files")
    assert "predict with with_variance=True" in out.read_text(encoding="utf-8")
    with pytest.raises(InputValueError, match="variance=True"):
        plot.variance_map(without)
    fig = plot.variance_map(bcnet_prediction, band="B8")
    image = fig.axes[0].get_images()[0]
    assert image.norm.__class__.__name__ == "LogNorm"
    assert 0 < image.norm.vmin < image.norm.vmax


def test_scatter_counts_every_sample(bcnet, linear):
    for model, n_panels in ((bcnet, 3), (linear, 2)):
        n = len(model.samples["target"])
        assert n > 100
        for band in model.ref_bands:
            fig = plot.scatter_density(model, band)
            panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
            meshes = [c for ax in panels for c in ax.collections if isinstance(c, QuadMesh)]
            assert len(meshes) == n_panels
            for mesh in meshes:
                assert mesh.get_array().sum() == n
            stage_rmse = model.metrics.sel(band=band, metric="rmse")
            titles = " ".join(ax.get_title() for ax in fig.axes)
            for stage in ("initial", "linear"):
                assert f"RMSE {float(stage_rmse.sel(stage=stage)):.4f}" in titles
            assert all(ax.get_xlabel() and ax.get_ylabel() for ax in panels)
            assert band in panels[0].get_xlabel()


def test_loss_curves_show_the_linear_baseline(bcnet, calibnet, linear):
    ref = calibnet.history["reference_loss"]
    ax = plot.loss_curves(calibnet).axes[0]
    flat = [line for line in ax.lines if np.allclose(line.get_ydata(), ref)]
    assert flat and "linear baseline" in flat[0].get_label()
    assert {"validation", "training (mean since last check)"} <= {
        line.get_label() for line in ax.lines
    }
    # With a variance head the loss is an NLL: no baseline line, and the figure says why.
    fig = plot.loss_curves(bcnet)
    assert not any("linear baseline" in line.get_label() for line in fig.axes[0].lines)
    assert "not comparable" in fig.get_supxlabel()
    with pytest.raises(InputValueError, match="closed form"):
        plot.loss_curves(linear)


def test_filters_only_for_bcnet(bcnet, calibnet):
    fig = plot.filters(bcnet)
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert len(panels) == bcnet.n_bands
    shift = shift_estimates(bcnet)["filter"]
    for ax, band, (east, north) in zip(panels, bcnet.ref_bands, shift, strict=True):
        assert ax.get_title().startswith(f"{band}: E {east:+.2f} m, N {north:+.2f} m")
        assert ax.get_xlabel() == "east (m)"
    with pytest.raises(InputValueError, match="method='bcnet'"):
        plot.filters(calibnet)


def test_metric_bars(bcnet):
    fig = plot.metric_bars(bcnet)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert [t.split(" (")[0] for t in titles] == ["RMSE", "R²", "explained variance", "max error"]
    for ax in fig.axes:
        # 4 bands x 3 stages; clipped bars are drawn at the floor, never below it.
        assert len(ax.patches) == 12
        assert min(p.get_y() + p.get_height() for p in ax.patches) >= -1.0 - 1e-9
        assert ax.get_ylim()[1] > 0


def test_rgb_crop_numpy_and_dask_agree(backend, pair, bcnet, bcnet_prediction):
    crop = (slice(100, 260), slice(40, 200))
    if backend == "numpy":
        src, prediction = pair.src, bcnet_prediction
    else:
        src = _pair(chunks_for(backend)).src
        prediction = xharmonise.predict(src, bcnet)  # lazy: only the crop is computed
    fig = plot.rgb_crop(src, prediction, crop)
    assert isinstance(fig.canvas, FigureCanvasAgg)
    before, after = (ax.get_images()[0].get_array() for ax in fig.axes)
    assert before.shape == after.shape == (160, 160, 3)
    assert fig.axes[0].get_title() == "before: source B2/B1/B0"
    assert fig.axes[1].get_title() == "after: prediction B4/B3/B2"
    # The haze of the TOA source makes "before" brighter under the shared stretch.
    assert before[..., :3].mean() > after[..., :3].mean()
    reference = plot.rgb_crop(pair.src, bcnet_prediction, crop)
    np.testing.assert_array_equal(before, reference.axes[0].get_images()[0].get_array())


def test_crop_reads_only_the_chunks_under_it(tmp_path, linear):
    # A scene larger than the default window, Dask-backed: every chunk the report
    # computes is recorded by a real function in the graph.
    big = simulate_pair((1100, 1100), seed=0, toa=True, chunks=256)
    computed: list[tuple[int, ...]] = []

    def record(block, block_info=None):
        computed.append(tuple(block_info[0]["chunk-location"]))
        return block

    src = big.src.copy(data=da.map_blocks(record, big.src.data, dtype=big.src.dtype))
    fig = plot.rgb_crop(src, xharmonise.predict(src, linear))
    # The default window is centred and 512 pixels wide: rows and columns 294:806, which
    # lie in chunks 1..3 of 0..4 along each axis.
    assert fig.get_suptitle().startswith("rows 294:806, cols 294:806 (512 x 512 px")
    assert sorted(computed) == [(0, i, j) for i in (1, 2, 3) for j in (1, 2, 3)]

    computed.clear()
    prediction = xharmonise.predict(src, linear)  # lazy: the report computes its window
    window = (slice(10, 40), slice(600, 700))
    plot.report(linear, tmp_path / "lazy.html", src=src, prediction=prediction, crop=window)
    assert sorted(computed) == [(0, 0, 2)]  # source and prediction share one read


def test_coregistered_prediction_is_on_the_source_grid(tmp_path, pair):
    # A model fitted with coregister=True moves predict's coordinates by minus the
    # measured shift: the pixels are still the source's, and the report must accept them.
    model = _fit(pair, "linear", coregister=True)
    prediction = xharmonise.predict(pair.src, model)
    east, north = prediction.attrs["coregistration_shift"]
    assert abs(east) > 1 and abs(north) > 1  # the pair's (3, -2) m shift was measured
    out = plot.report(model, tmp_path / "co.html", src=pair.src, prediction=prediction)
    assert "rgb_crop" in _pngs(tmp_path / "co_files")
    assert "the source was corrected by the shift" in out.read_text(encoding="utf-8")
    # A move larger than the measured shift is another grid.
    far = prediction.assign_coords(x=prediction["x"] + 20.0)
    with pytest.raises(GridError, match="not on the source's grid"):
        plot.rgb_crop(pair.src, far)


def test_bad_arguments_name_the_fix(tmp_path, pair, linear):
    prediction = xharmonise.predict(pair.src, linear)
    path = tmp_path / "bad.html"
    with pytest.raises(InputValueError, match=r"outside the image.*choose 0 <= start"):
        plot.report(
            linear, path, src=pair.src, prediction=prediction, crop=(slice(300, 500), slice(0, 100))
        )
    with pytest.raises(InputValueError, match="crop must be"):
        plot.report(linear, path, src=pair.src, prediction=prediction, crop=(0, 100))
    other = xharmonise.predict(pair.src.isel(y=slice(0, 200)), linear)
    with pytest.raises(GridError, match=r"xharmonise\.predict\(src, model\)"):
        plot.report(linear, path, src=pair.src, prediction=other)
    shifted = prediction.assign_coords(x=prediction["x"] + 2.0)
    with pytest.raises(GridError, match="not on the source's grid"):
        plot.rgb_crop(pair.src, shifted)
    with pytest.raises(InputValueError, match="pass the source image"):
        plot.report(linear, path, prediction=prediction)
    # The report never predicts: the caller gives the prediction it draws.
    with pytest.raises(InputValueError, match=r"prediction=xharmonise\.predict\(src, model\)"):
        plot.report(linear, path, src=pair.src)
    with pytest.raises(InputValueError, match="crop= needs src= and prediction="):
        plot.report(linear, path, crop=(slice(0, 10), slice(0, 10)))
    with pytest.raises(BandMismatchError, match="B8"):
        plot.scatter_density(linear, "B9")
    with pytest.raises(BandMismatchError, match="select"):
        plot.rgb_crop(pair.src.isel(band=[0, 1]), prediction)
    assert not path.exists() and not (tmp_path / "bad_files").exists()
    for cls in (InputValueError, GridError, BandMismatchError):
        assert issubclass(cls, HarmoniseError)


def test_figures_stay_out_of_pyplot(linear):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    figs = [plot.metric_bars(linear), plot.scatter_density(linear, 0)]
    assert plt.get_fignums() == before
    assert all(isinstance(f.canvas, FigureCanvasAgg) for f in figs)
