"""``xharmonise fit`` and ``evaluate`` on a Sentinel-2 time series held as files: one
reference raster per date (and one cloud mask per date), as users hold them on disk.

The files are a simulated series written as GeoTIFFs; each command runs in-process
through ``main([...])`` and its result is checked against what was written (the dates)
and against the library run on the same series in memory (the model, the scores).
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr

import xharmonise
from xharmonise.cli import format_dates, main
from xharmonise.errors import BandMismatchError, DateError, GridError
from xharmonise.runfiles import file_date, open_mask_series, open_series
from xharmonise.simulate import simulate_series

# The source covers 40 x 40 reference pixels: 25 patches of 8. The nearest date (-1) is
# mostly cloudy, so "auto" fills it from the next nearest: the fit learns from two dates.
SHAPE, PATCH = (200, 200), "8"
DAYS, CLOUDS = (-9, -1, 3), (0.1, 0.6, 0.1)
SRC_TIME = "2024-06-15"
LINEAR = ("--method", "linear", "--patch-size", PATCH, "-q")


def run(*args: str | Path) -> tuple[int, str, str]:
    """``xharmonise ARGS`` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def _write(da: xr.DataArray, path: Path, tags: dict[str, str] | None = None) -> Path:
    """``da`` as a GeoTIFF with its band names as band descriptions (as the simulator's
    ``to_geotiff`` writes them) and ``tags`` as metadata."""
    out = da.astype("uint8") if da.dtype == bool else da
    if "band" not in out.dims:
        out = out.expand_dims(band=["cloud"])
    out = out.drop_vars("time", errors="ignore")
    names = tuple(str(b) for b in out["band"].values)
    out = out.assign_coords(band=np.arange(1, out.sizes["band"] + 1))
    out.attrs = {"long_name": names, **(tags or {})}
    out.rio.to_raster(path, tiled=True, lock=threading.Lock())
    return path


@pytest.fixture(scope="module")
def series():
    return simulate_series(SHAPE, seed=3, src_date=SRC_TIME, days=DAYS, ref_clouds=CLOUDS)


def _days(series) -> list[str]:
    return [str(t)[:10] for t in series.ref["time"].values]


@pytest.fixture(scope="module")
def files(series, tmp_path_factory) -> dict[str, list[Path] | Path]:
    """The source without a date, references dated by their names (one YYYYMMDD, the
    others YYYY-MM-DD), their masks, and the same references without any date."""
    folder = tmp_path_factory.mktemp("series")
    days = _days(series)
    named = [f"S2A_MSIL2A_{days[0].replace('-', '')}T105031_T31TCJ.tif"]
    named += [f"s2_{d}.tif" for d in days[1:]]
    out: dict[str, list[Path] | Path] = {"src": _write(series.src, folder / "phr.tif")}
    out["refs"] = [_write(series.ref.isel(time=i), folder / n) for i, n in enumerate(named)]
    out["masks"] = [
        _write(series.mask.isel(time=i), folder / f"clouds_{i}.tif") for i in range(len(days))
    ]
    out["undated"] = [
        _write(series.ref.isel(time=i), folder / f"ref_{'abc'[i]}.tif") for i in range(len(days))
    ]
    out["folder"] = folder
    return out


def _masks(files) -> list[str | Path]:
    return [a for m in files["masks"] for a in ("--mask", m)]


@pytest.fixture(scope="module")
def series_fit(files) -> tuple[Path, str]:
    model = files["folder"] / "series.safetensors"
    code, out, err = run(
        "fit", files["src"], *files["refs"], *_masks(files), "--src-time", SRC_TIME,
        *LINEAR, "-o", model,
    )  # fmt: skip
    assert code == 0, err
    return model, out


def test_fit_on_files_is_the_library_fit_on_the_series(series, series_fit):
    path, out = series_fit
    model = xharmonise.load(path)
    record = model.fit_report.dates
    # The dates read from the file names are the ones written, at the day.
    assert [c["date"][:10] for c in record["candidates"]] == sorted(
        _days(series), key=lambda d: abs(np.datetime64(d) - np.datetime64(SRC_TIME))
    )
    assert [d[:10] for d in record["used"]] == _days(series)[1:]  # -1, then 3 to fill it
    # The same fit in memory: float32 GeoTIFFs are lossless; only the summation order of
    # lazy reductions may differ, hence float rounding on the coefficients and metrics.
    expected = xharmonise.fit(
        series.src, series.ref, method="linear", mask=series.mask, patch_size=int(PATCH),
        progress=False,
    )  # fmt: skip
    assert record == expected.fit_report.dates
    assert model.patches == expected.patches
    np.testing.assert_allclose(model.linear, expected.linear, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.metrics, expected.metrics, rtol=1e-4, atol=1e-6)
    xr.testing.assert_allclose(
        model.fit_report.date_metrics, expected.fit_report.date_metrics, rtol=1e-4, atol=1e-6
    )
    # fit prints the dates it learned from, as `info` does.
    assert format_dates(model) in out
    assert f"reference dates: source {SRC_TIME}T00:00:00, policy auto within ±30 days" in out
    assert out.strip().endswith(f"wrote {path}")


def test_dates_from_tags_and_from_the_option(series, files, tmp_path):
    folder = tmp_path
    tagged = [
        _write(
            series.ref.isel(time=i),
            folder / f"tagged_{i}.tif",
            {"TIFFTAG_DATETIME": f"{day.replace('-', ':')} 10:30:00"},
        )
        for i, day in enumerate(_days(series))
    ]
    src = _write(series.src, folder / "phr.tif", {"TIFFTAG_DATETIME": "2024:06:15 10:00:00"})
    # No --src-time: the source's tag dates it; the tags date the references.
    code, _, err = run("fit", src, *tagged, "--dates", "all", *LINEAR, "-o", folder / "t.st")
    assert code == 0, err
    record = xharmonise.load(folder / "t.st").fit_report.dates
    assert record["source"] == "2024-06-15T10:00:00"
    # Without masks the nearest date is clear everywhere: the others are candidates only.
    assert sorted(c["date"] for c in record["candidates"]) == [
        f"{d}T10:30:00" for d in _days(series)
    ]
    # --ref-dates dates files that have no date of their own, in their order.
    given = ["2024-06-05", "2024-06-13", "2024-06-19"]
    code, _, err = run(
        "fit", files["src"], *files["undated"], "--ref-dates", ",".join(given),
        "--src-time", SRC_TIME, "--dates", "all", *LINEAR, "-o", folder / "g.st",
    )  # fmt: skip
    assert code == 0, err
    record = xharmonise.load(folder / "g.st").fit_report.dates
    assert sorted(c["date"] for c in record["candidates"]) == [f"{d}T00:00:00" for d in given]


@pytest.mark.parametrize(
    ("options", "kwargs"),
    [
        (("--dates", "nearest"), {"dates": "nearest"}),
        (("--dates", "2024-06-06,2024-06-18"), {"dates": ["2024-06-06", "2024-06-18"]}),
        (("--max-days", "5"), {"max_days": 5.0}),
    ],
)
def test_date_options_are_the_library_options(series, files, series_fit, tmp_path, options, kwargs):
    out = tmp_path / "m.safetensors"
    code, _, err = run(
        "fit", files["src"], *files["refs"], *_masks(files), "--src-time", SRC_TIME,
        *options, *LINEAR, "-o", out,
    )  # fmt: skip
    assert code == 0, err
    expected = xharmonise.fit(
        series.src, series.ref, method="linear", mask=series.mask, patch_size=int(PATCH),
        progress=False, **kwargs,
    )  # fmt: skip
    record = xharmonise.load(out).fit_report.dates
    assert record == expected.fit_report.dates
    assert record != xharmonise.load(series_fit[0]).fit_report.dates  # the option changed it


def test_evaluate_on_files_is_the_library_evaluate(series, files, series_fit, tmp_path):
    path, _ = series_fit
    table = tmp_path / "scores.json"
    code, out, err = run(
        "evaluate", files["src"], *files["refs"], *_masks(files), "--src-time", SRC_TIME,
        "--dates", "nearest", "-m", path, "--patch-size", PATCH, "-o", table, "-q",
    )  # fmt: skip
    assert code == 0, err
    assert out.strip().endswith(f"wrote {table}")
    expected = xharmonise.evaluate(
        series.src, series.ref, xharmonise.load(path), mask=series.mask,
        patch_size=int(PATCH), dates="nearest",
    )  # fmt: skip
    scores = json.loads(table.read_text())
    assert scores["patches"] == expected.attrs["patches"]
    got = [
        scores["metrics"][str(b)][str(m)][str(s)]
        for b in expected["band"].values
        for m in expected["metric"].values
        for s in expected["stage"].values
    ]
    np.testing.assert_allclose(got, expected["metrics"].values.ravel(), rtol=1e-4, atol=1e-6)


def test_a_raster_without_a_date_is_refused_naming_the_fix(files):
    args = ["fit", files["src"], *files["undated"], "--src-time", SRC_TIME, *LINEAR]
    code, _, err = run(*args)
    assert code == 1
    assert err.startswith(f"xharmonise: error: the reference {files['undated'][0]} has no date")
    assert "--ref-dates" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(DateError, match="give the dates of the rasters in order with --ref-dates"):
        main([str(a) for a in args] + ["--debug"])


def test_rasters_of_different_grids_or_bands_are_refused(series, files, tmp_path):
    days = _days(series)
    first = files["refs"][0]
    rows, cols = series.ref.sizes["y"], series.ref.sizes["x"]
    cropped = _write(series.ref.isel(time=1, y=slice(0, 30)), tmp_path / f"s2_{days[1]}.tif")
    with pytest.raises(
        GridError, match=rf"{cropped} has 30 x {cols} pixels, {first} has {rows} x {cols}"
    ):
        main(["fit", str(files["src"]), str(first), str(cropped), "--debug", *LINEAR])
    moved = series.ref.isel(time=1)
    moved = _write(moved.assign_coords(x=moved.x + 10), tmp_path / f"moved_{days[1]}.tif")
    with pytest.raises(GridError, match=rf"{moved} has the transform"):
        main(["fit", str(files["src"]), str(first), str(moved), "--debug", *LINEAR])
    three = _write(series.ref.isel(time=1, band=[0, 1, 2]), tmp_path / f"b_{days[1]}.tif")
    with pytest.raises(BandMismatchError, match=rf"{three} has the bands"):
        main(["fit", str(files["src"]), str(first), str(three), "--debug", *LINEAR])
    # A mask on another grid than its reference's.
    small = _write(series.mask.isel(time=0, x=slice(0, 20)), tmp_path / "small_mask.tif")
    masks = ["--mask", files["masks"][0], "--mask", small, "--mask", files["masks"][2]]
    code, _, err = run("fit", files["src"], *files["refs"], *masks, *LINEAR)
    assert code == 1 and f"the mask {small} has {rows} x 20 pixels" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--mask", "m.tif"), "1 --mask for 3 REF rasters: give one --mask per REF"),
        (("--ref-dates", "2024-06-01"), "--ref-dates gives 1 dates for 3 REF rasters"),
        (("--dates", "latest"), "'latest': give a policy (auto, nearest, all) or reference"),
        (("--max-days", "-1"), "-1 must be 0 or more"),
    ],
)
def test_usage_errors(files, extra, message):
    with contextlib.chdir(files["folder"]):
        code, _, err = run("fit", files["src"], *files["refs"], *extra, *LINEAR)
    assert code == 2 and message in err, err


def test_file_date():
    assert file_date("S2B_MSIL2A_20240611T105619_N0510_R094_T31TCJ_20240611T140000.tif") == (
        np.datetime64("2024-06-11")
    )
    assert file_date("/data/2023/s2_2024-06-01.tif") == np.datetime64("2024-06-01")
    # Eight digits that are no day are skipped; a mixed separator is no date.
    assert file_date("tile_12345678_20240601.tif") == np.datetime64("2024-06-01")
    assert file_date("s2_2024-0601.tif") is None
    assert file_date("/data/2024-06-01/B04.tif") is None  # the folder does not date it


def test_the_stack_is_lazy_and_holds_the_series_written(series, files):
    ref = open_series([str(p) for p in files["refs"]], chunks=16)
    mask = open_mask_series([str(p) for p in files["masks"]], ref, files["refs"], chunks=16)
    # Dask over the files, one date per chunk: nothing is read until the fit reads it.
    assert isinstance(ref.data, da.Array) and isinstance(mask.data, da.Array)
    assert ref.chunks[0] == (1, 1, 1) and ref.chunks[2][0] == 16
    assert "TIFFTAG_DATETIME" not in ref.attrs  # no single date stands for the series
    np.testing.assert_array_equal(ref.values, series.ref.values)
    np.testing.assert_array_equal(mask.values, series.mask.values)
