"""The ``xharmonise`` command line, run as a user runs it.

Commands run in-process through ``main([...])``, the function the console script calls:
the same argument parsing, output, progress bars, exit codes and one-line errors, without
seconds of Python start-up per command. What only a real process shows runs in one: the
installed console script and ``python -m xharmonise``, Ctrl-C, a closed pipe, an error in
a fresh process, a cluster scheduler address and fsspec configured from the environment.
Results are checked against the library called in-process on the same files, and against
the simulator's truth where the command computes something.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rioxarray
import xarray as xr
import zarr
from conftest import BUCKET, FailAfter, dashboard_port_taken, local_cluster
from dask.utils import key_split

import xharmonise
from xharmonise import demo
from xharmonise.cli import main
from xharmonise.errors import InputValueError, UnknownMethodError
from xharmonise.simulate import simulate_pair, simulate_series

# Generous: a loaded 2-core machine; a hung command must still end the test.
_TIMEOUT = 600
# Commands must be as warning-free as the library under pytest: warnings are errors, but
# for the two third-party deprecations pyproject.toml also ignores (odc-geo's, not ours).
_ENV = dict(
    os.environ,
    PYTHONWARNINGS=",".join(
        [
            "error",
            "ignore:Use `@` matmul instead of `*` mul operator:PendingDeprecationWarning",
            "ignore:The 'shapely.ops.transform()' function is deprecated:DeprecationWarning",
        ]
    ),
)


def xh(
    *args: str | os.PathLike[str],
    process: bool = False,
    script: bool = False,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``xharmonise ARGS``; never raises on a non-zero exit.

    In-process through ``main`` by default (under pytest's warnings-as-errors, as the
    commands' ``PYTHONWARNINGS`` below); in a fresh ``python -m xharmonise`` with
    ``process`` or ``env`` (environment variables only a new process reads, e.g. fsspec's
    configuration), through the installed console script with ``script``.
    """
    argv = [str(a) for a in args]
    if not (process or script or env):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.chdir(cwd or Path.cwd()), redirect_stdout(out), redirect_stderr(err):
            code = main(argv)
        return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())
    module = [sys.executable, "-m", "xharmonise"]
    cmd = [str(Path(sys.executable).with_name("xharmonise"))] if script else module
    return subprocess.run(
        [*cmd, *argv],
        capture_output=True,
        text=True,
        timeout=_TIMEOUT,
        cwd=cwd,
        env={**_ENV, **(env or {})},
    )


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr
    return proc


def _one_line_error(proc: subprocess.CompletedProcess, code: int) -> str:
    """The single stderr line of a failed command (asserting there is exactly one)."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("xharmonise: error: "), lines[0]
    return lines[0]


def _open(path: Path, chunks: int = 128) -> xr.DataArray:
    return rioxarray.open_rasterio(path, chunks={"band": -1, "y": chunks, "x": chunks})


@pytest.fixture(scope="module")
def pair():
    # 80 x 80 reference pixels: 25 patches of 16, the no-data border and clouds leave
    # enough for a split.
    return simulate_pair((400, 400), seed=11, nodata_border=10, ref_clouds=0.1)


@pytest.fixture(scope="module")
def files(pair, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cli")
    paths = pair.to_geotiff(folder)
    paths["garbage"] = folder / "garbage.tif"
    paths["garbage"].write_bytes(b"not a raster\n" * 10)
    paths["folder"] = folder
    return paths


@pytest.fixture(scope="module")
def linear_fit(files) -> tuple[Path, subprocess.CompletedProcess]:
    model = files["folder"] / "linear.safetensors"
    proc = _ok(
        xh(
            "fit", files["src"], files["ref"], "--method", "linear", "--mask", files["mask"],
            "--patch-size", "16", "--out", model, "--quiet",
        )
    )  # fmt: skip
    return model, proc


# --------------------------------------------------------------------------- fit
def test_fit_linear_equals_library_fit_and_prints_metrics(pair, linear_fit):
    path, proc = linear_fit
    model = xharmonise.load(path)
    # The same fit in-process on the simulated arrays (float32 GeoTIFFs are lossless, and
    # they carry the band names, which pick each band's MTF). Only the summation order of
    # lazy reductions may differ.
    assert (model.src_bands, model.ref_bands) == (pair.truth.src_bands, pair.truth.ref_bands)
    expected = xharmonise.fit(
        pair.src,
        pair.ref,
        method="linear",
        mask=pair.mask,
        patch_size=16,
        progress=False,
    )
    np.testing.assert_allclose(model.linear, expected.linear, rtol=1e-5, atol=1e-6)
    assert model.patches == expected.patches
    assert model.sampling == expected.sampling == {
        "patch_size": 16, "test_fraction": 0.1, "max_patches": None, "seed": 0,
    }  # fmt: skip
    assert "sampling: patches of 16 px, 0.1 held out, no cap, seed 0" in proc.stdout
    assert model.patches["partial"] > 0  # the mask file was used
    # The printed table is the model's: one row per band x metric, stages as columns.
    rows = [line.split() for line in proc.stdout.splitlines() if re.match(r"^B\d\s", line)]
    assert len(rows) == 4 * model.metrics.sizes["metric"]
    _, metric, *values = rows[0]
    np.testing.assert_allclose(
        [float(v) for v in values],
        model.metrics.isel(band=0).sel(metric=metric).values,
        atol=5e-5,  # printed with 4 decimals
    )
    assert proc.stdout.strip().endswith(f"wrote {path}")
    assert proc.stderr == ""  # --quiet: no progress bar, and no warning either


def test_fit_band_options(files, tmp_path):
    out = tmp_path / "two.safetensors"
    proc = _ok(
        xh(
            "fit", files["src"], files["ref"], "--method", "linear", "--patch-size", "16",
            "--bands", "B0=B2,B2=B4", "--scale", "1", "--coregister", "--out", out, "-q",
        )
    )  # fmt: skip
    model = xharmonise.load(out)
    assert (model.src_bands, model.ref_bands) == (("B0", "B2"), ("B2", "B4"))
    assert model.linear.shape == (2, 3)
    # The simulated pair is registered: the measured shift is well under a source pixel.
    assert model.shift_estimate is not None and model.applied_shift is not None
    shift = model.shift.sel(estimate="phase_correlation")
    assert float(abs(shift).max()) < 0.5
    assert "shift of the source" in proc.stdout


@pytest.mark.slow
def test_fit_neural_with_progress(files, tmp_path):
    out = tmp_path / "bcnet.safetensors"
    proc = _ok(
        xh(
            "fit", files["src"], files["ref"], "--method", "bcnet", "--variance",
            "--iterations", "4", "--patch-size", "16", "--mask", files["mask"], "--out", out,
        )
    )  # fmt: skip
    assert "train bcnet" in proc.stderr  # the training progress bar, on stderr
    assert re.search(r"shift of the source.*filter \([+-]\d", proc.stdout), proc.stdout
    model = xharmonise.load(out)
    assert (model.method, model.variance) == ("bcnet", True)
    assert 0 < model.history["iterations_run"] <= 4


# --------------------------------------------------------------------------- predict
def test_predict_equals_library_and_info_describes_it(files, linear_fit, tmp_path):
    model, _ = linear_fit
    store = tmp_path / "out.zarr"
    proc = _ok(xh("predict", files["src"], "--model", model, "--out", store, "--chunks", "128"))
    assert "100% Completed" in proc.stderr  # the write's progress bar
    expected = xharmonise.predict(_open(files["src"]), xharmonise.load(model)).compute()
    back = xr.open_zarr(store)
    assert list(back.data_vars) == ["prediction"]  # σ² only from a head, unless asked
    np.testing.assert_array_equal(back["prediction"].values, expected["prediction"].values)
    # --variance asks any model for σ²: a linear model's is its fit's empirical one (#15).
    with_var = tmp_path / "var.zarr"
    _ok(xh("predict", files["src"], "-m", model, "-o", with_var, "--variance", "-q"))
    back_var = xr.open_zarr(with_var)
    assert back_var["variance"].attrs["variance_kind"] == "empirical"
    expected = xharmonise.predict(_open(files["src"]), xharmonise.load(model), with_variance=True)
    np.testing.assert_array_equal(back_var["variance"].values, expected["variance"].values)
    # --compressor lz4: the same values, in Blosc lz4 shards.
    fast = tmp_path / "lz4.zarr"
    _ok(xh("predict", files["src"], "-m", model, "-o", fast, "--compressor", "lz4", "-q"))
    np.testing.assert_array_equal(xr.open_zarr(fast)["prediction"].values, back["prediction"])
    inner = zarr.open_group(fast, mode="r")["prediction"].metadata.codecs[0].codecs
    assert "blosc" in [c.to_dict()["name"] for c in inner]
    # --applicability adds the (y, x) applicability, as the library computes it.
    with_app = tmp_path / "app.zarr"
    _ok(xh("predict", files["src"], "-m", model, "-o", with_app, "--applicability", "-q"))
    back_app = xr.open_zarr(with_app)
    assert back_app["applicability"].dims == ("y", "x")
    lazy = xharmonise.predict(
        _open(files["src"]), xharmonise.load(model), with_applicability=True
    )  # the model's own scene: no OutOfDomainWarning (filterwarnings = error)
    np.testing.assert_array_equal(back_app["applicability"].values, lazy["applicability"].values)
    src = _open(files["src"])
    assert back.rio.crs == src.rio.crs
    assert back["prediction"].rio.transform() == src.rio.transform()

    info = _ok(xh("info", store)).stdout
    assert re.search(r"^status\s+complete$", info, re.M)
    assert "float32 (band, y, x) 4 x 400 x 400" in info
    assert "chunks (1, 128, 128), shards (4, 128, 128)" in info
    assert re.search(r"^crs\s+EPSG:32631$", info, re.M)
    transform = ", ".join(f"{v:.15g}" for v in tuple(src.rio.transform())[:6])
    assert f"({transform})" in info
    assert re.search(r"^method\s+linear$", info, re.M)
    assert re.search(r"^xharmonise_version\s+\d", info, re.M)
    # Any fsspec URL, and the installed console script, give the same description.
    by_url = _ok(xh("info", f"file://{store}", script=True)).stdout
    assert by_url.splitlines()[1:] == info.splitlines()[1:]


def test_predict_refuses_existing_store_then_overwrites(files, linear_fit, tmp_path):
    model, _ = linear_fit
    store = tmp_path / "out.zarr"
    _ok(xh("predict", files["src"], "-m", model, "-o", store, "-q"))
    before = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()}
    line = _one_line_error(xh("predict", files["src"], "-m", model, "-o", store), 1)
    assert "--overwrite" in line and "--resume" in line
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()} == before
    _ok(xh("predict", files["src"], "-m", model, "-o", store, "--overwrite", "-q"))
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()} != before


def test_predict_resume_completes_an_interrupted_store(files, linear_fit, tmp_path):
    model, _ = linear_fit
    store = tmp_path / "out.zarr"
    # Interrupt, in-process, the very write the command makes: same data, same chunks.
    lazy = xharmonise.predict(_open(files["src"]), xharmonise.load(model))
    failing = lazy.copy()
    data = lazy["prediction"].data.map_blocks(FailAfter(5), dtype=np.float32)
    failing["prediction"] = lazy["prediction"].copy(data=data)
    with pytest.raises(RuntimeError, match="interrupted"):
        xharmonise.to_zarr(failing, store)
    done = {p.name for p in (store / ".xharmonise" / "done").iterdir()}
    assert 0 < len(done) < 16

    info = _ok(xh("info", store)).stdout
    assert f"INCOMPLETE: {len(done)} of 16 regions written" in info
    line = _one_line_error(xh("predict", files["src"], "-m", model, "-o", store), 1)
    assert "--resume" in line

    shards = store / "prediction" / "c" / "0"
    before = {f"{p.parent.name}.{p.name}": p.stat().st_mtime_ns for p in shards.glob("*/*")}
    time.sleep(0.01)  # so that a rewritten shard gets a later mtime
    _ok(xh("predict", files["src"], "-m", model, "-o", store, "--resume", "--chunks", "128"))
    after = {f"{p.parent.name}.{p.name}": p.stat().st_mtime_ns for p in shards.glob("*/*")}
    assert len(after) == 16
    assert all(after[k] == before[k] for k in done)  # finished regions left alone
    assert not (store / ".xharmonise").exists()
    np.testing.assert_array_equal(
        xr.open_zarr(store)["prediction"].values, lazy["prediction"].values
    )
    assert re.search(r"^status\s+complete$", _ok(xh("info", store)).stdout, re.M)


@pytest.mark.slow
def test_ctrl_c_then_resume(files, linear_fit, tmp_path):
    model, _ = linear_fit
    store = tmp_path / "out.zarr"
    done = store / ".xharmonise" / "done"
    # 16-pixel chunks: 625 regions, seconds of writing to interrupt. SIGINT is reset to
    # its default in the child: a background shell may have left it ignored.
    child = subprocess.Popen(
        [sys.executable, "-m", "xharmonise", "predict", files["src"], "-m", model,
         "-o", store, "--chunks", "16", "-q"],
        stderr=subprocess.PIPE, text=True, env=_ENV,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + _TIMEOUT
        while child.poll() is None and time.monotonic() < deadline:
            if done.is_dir() and len(list(done.iterdir())) >= 3:
                break
            time.sleep(0.01)
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=_TIMEOUT)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 130, err
    assert err == "xharmonise: error: interrupted (rerun with --resume to finish the store)\n"
    assert "INCOMPLETE" in _ok(xh("info", store)).stdout
    _ok(xh("predict", files["src"], "-m", model, "-o", store, "--chunks", "16", "--resume", "-q"))
    expected = xharmonise.predict(_open(files["src"]), xharmonise.load(model)).compute()
    np.testing.assert_array_equal(
        xr.open_zarr(store)["prediction"].values, expected["prediction"].values
    )


def test_closed_pipe_ends_quietly(files, linear_fit, tmp_path):
    model, _ = linear_fit
    store = tmp_path / "out.zarr"
    _ok(xh("predict", files["src"], "-m", model, "-o", store, "-q"))
    # `xharmonise info … | head -0`: the reader is gone before the first line.
    child = subprocess.Popen(
        [sys.executable, "-m", "xharmonise", "info", store],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_ENV,
    )  # fmt: skip
    child.stdout.close()
    with child.stderr:
        err = child.stderr.read()
    assert child.wait(timeout=_TIMEOUT) == 128 + signal.SIGPIPE
    assert err == b""


@pytest.mark.slow
def test_predict_on_a_cluster(files, linear_fit, tmp_path):
    model, _ = linear_fit
    store = tmp_path / "out.zarr"
    # Another cluster's web server on the default port must not stop this one.
    with dashboard_port_taken(), local_cluster() as client:
        client.get_task_stream()  # the first call makes the scheduler start recording
        proc = _ok(
            xh(
                "predict", files["src"], "-m", model, "-o", store, "--chunks", "128",
                "--scheduler", client.scheduler.address, process=True,
            )
        )  # fmt: skip
        # The cluster's workers ran the write: the scheduler recorded the region tasks.
        tasks = [key_split(t["key"]) for t in client.get_task_stream()]
        assert tasks.count("_RegionWriter") == 16
    assert "100% Completed" in proc.stderr  # distributed's progress bar
    expected = xharmonise.predict(_open(files["src"]), xharmonise.load(model)).compute()
    np.testing.assert_array_equal(
        xr.open_zarr(store)["prediction"].values, expected["prediction"].values
    )


@pytest.mark.slow
def test_predict_and_info_on_s3(files, linear_fit, s3):
    model, _ = linear_fit
    url = f"s3://{BUCKET}/cli.zarr"
    # On the command line, remote stores take fsspec's configuration from the environment.
    env = {
        "AWS_ACCESS_KEY_ID": s3["key"],
        "AWS_SECRET_ACCESS_KEY": s3["secret"],
        "FSSPEC_S3_ENDPOINT_URL": s3["client_kwargs"]["endpoint_url"],
    }
    _ok(xh("predict", files["src"], "-m", model, "-o", url, "--chunks", "128", "-q", env=env))
    expected = xharmonise.predict(_open(files["src"]), xharmonise.load(model)).compute()
    back = xr.open_zarr(url, storage_options=s3)
    np.testing.assert_array_equal(back["prediction"].values, expected["prediction"].values)
    info = _ok(xh("info", url, env=env)).stdout
    assert re.search(r"^status\s+complete$", info, re.M)
    assert "float32 (band, y, x) 4 x 400 x 400" in info
    line = _one_line_error(xh("predict", files["src"], "-m", model, "-o", url, env=env), 1)
    assert "--overwrite" in line


# --------------------------------------------------------------------------- errors
_ERRORS = [
    (["fit", "{folder}/missing.tif", "{ref}"], 1, "does not exist"),
    (["fit", "{garbage}", "{ref}"], 1, "cannot read the source"),
    (["fit", "{src}", "{ref}", "--bands", "9=1", "--method", "linear"], 1, "unknown band"),
    (["fit", "{src}", "{ref}", "--mask", "{folder}/none.tif"], 1, "the mask"),
    (["fit", "{src}", "{ref}", "--bands", "1=,2"], 2, "--bands"),
    (["fit", "{src}", "{ref}", "--method", "nope"], 2, "invalid choice"),
    (["fit", "{src}", "{ref}", "--scale", "abc"], 2, "--scale"),
    # The output is refused before the inputs are even opened (garbage would fail there).
    (["fit", "{garbage}", "{ref}", "-o", "{folder}/no/such/m.safetensors"], 1, "does not exist"),
    (["fit", "{garbage}", "{ref}", "-o", "{folder}"], 1, "is a folder"),
    (["predict", "{src}", "-m", "{folder}/none.safetensors", "-o", "x.zarr"], 1, "no model"),
    (["predict", "{src}", "-m", "{garbage}", "-o", "x.zarr"], 1, "not a readable"),
    (["predict", "{src}", "-m", "m", "-o", "x.zarr", "--resume", "--overwrite"], 2, "not allowed"),
    (["info", "{folder}/none.zarr"], 1, "no Zarr store"),
    (["demo", "--src", "{src}"], 2, "--src and --ref"),
    (["report", "{folder}/none.safetensors"], 1, "no model"),
    (["evaluate", "{src}", "{ref}", "-m", "{folder}/none.safetensors"], 1, "no model"),
    # The table's destination is refused before anything is read.
    (["evaluate", "{garbage}", "{ref}", "-m", "m", "-o", "scores.txt"], 2, ".json or .csv"),
    (["evaluate", "{garbage}", "{ref}", "-m", "m", "-o", "{folder}/no/s.csv"], 1, "not exist"),
    (["evaluate", "{src}", "{ref}", "-m", "m", "--coregister", "--no-coregister"], 2, "allowed"),
    ([], 2, "COMMAND"),
    (["frobnicate"], 2, "invalid choice"),
]


@pytest.mark.parametrize(("args", "code", "says"), _ERRORS, ids=lambda v: str(v)[:40])
def test_errors_are_one_line_with_exit_code(files, args, code, says, tmp_path, monkeypatch, capsys):
    # In-process through main(): the same argument handling and error reporting as the
    # console script without a Python start-up per case (a subprocess case is below).
    names = {k: str(v) for k, v in files.items()}
    # In an empty folder, where relative outputs (x.zarr) would land.
    monkeypatch.chdir(tmp_path)
    returned = main([a.format(**names) for a in args])
    out, err = capsys.readouterr()
    proc = subprocess.CompletedProcess(args, returned, out, err)
    line = _one_line_error(proc, code)
    assert says in line, line
    assert not list(tmp_path.iterdir())  # nothing written on failure


def test_an_error_in_a_subprocess_is_one_line_too(files, tmp_path):
    proc = xh(
        "predict", files["src"], "-m", files["garbage"], "-o", "x.zarr", cwd=tmp_path, process=True
    )
    assert "not a readable" in _one_line_error(proc, 1)
    assert not list(tmp_path.iterdir())


# The netCDF container has no grid of its own, which rasterio warns about on opening it.
@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_subdatasets_are_refused(files, tmp_path):
    import rasterio.shutil

    from xharmonise.errors import HarmoniseError
    from xharmonise.runfiles import InputError, open_raster

    with rasterio.Env() as env:
        if "netCDF" not in env.drivers():
            pytest.skip("GDAL without the netCDF driver")
    # Two subdatasets on one grid, which rioxarray opens as one Dataset.
    path = tmp_path / "two.nc"
    rasterio.shutil.copy(files["ref"], path, driver="netCDF")
    rasterio.shutil.copy(files["ref"], path, driver="netCDF", APPEND_SUBDATASET="YES")
    with pytest.raises(InputError, match="several subdatasets"):
        open_raster(str(path))
    assert issubclass(InputError, HarmoniseError) and issubclass(InputError, OSError)


def test_debug_shows_the_traceback(files):
    # A real process: with --debug, main() lets the error propagate for Python to print.
    proc = xh(
        "--debug", "predict", files["src"], "-m", files["garbage"], "-o", "x.zarr", process=True
    )
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "ModelFileError" in proc.stderr


def test_help_and_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("xharmonise ")
    assert main(["--help"]) == 0
    usage = capsys.readouterr().out
    assert all(c in usage for c in ("fit", "predict", "report", "info", "demo"))
    # The main job through the module entry point, as the console script runs it.
    demo = xh("demo", "--help", process=True)
    assert demo.returncode == 0 and "usage: xharmonise demo" in demo.stdout
    # The old `python -m xharmonise.demo` says where the command went (the demo module
    # no longer imports the command line, which imports it).
    legacy = subprocess.run(
        [sys.executable, "-m", "xharmonise.demo", "--help"],
        capture_output=True,
        text=True,
        timeout=_TIMEOUT,
    )
    assert legacy.returncode == 1 and "run `xharmonise demo`" in legacy.stderr


def test_method_choices_are_the_registry(capsys):
    from xharmonise.models.registry import METHODS

    for command in ("fit", "demo"):
        assert main([command, "--help"]) == 0
        usage = capsys.readouterr().out
        assert "{" + ",".join(METHODS) + "}" in usage, usage


def test_demo_refuses_half_a_pair_with_a_library_error(tmp_path):
    from xharmonise.demo import run
    from xharmonise.errors import InputValueError

    pair = simulate_pair((100, 100), seed=0)
    with pytest.raises(InputValueError, match="give both src and ref"):
        run(tmp_path, src=pair.src, echo=lambda *a: None)
    assert not list(tmp_path.iterdir())  # refused before any work


# --------------------------------------------------------------------------- evaluate
def test_evaluate_gives_back_fits_table_as_text_json_and_csv(files, linear_fit, tmp_path):
    path, _ = linear_fit
    model = xharmonise.load(path)
    args = [
        "evaluate", files["src"], files["ref"], "-m", path, "--mask", files["mask"],
        "--split", "test", "--quiet",
    ]  # fmt: skip
    # No sampling option: the model's own (fit's --patch-size 16) are read from its file.
    proc = _ok(xh(*args, "-o", tmp_path / "scores.json"))
    assert proc.stderr == "" and proc.stdout.strip().endswith(f"wrote {tmp_path / 'scores.json'}")
    # Printed: the metrics (initial, linear, model), then σ² coverage beside its nominal.
    rows = [line.split() for line in proc.stdout.splitlines() if re.match(r"^B\d\s", line)]
    n_metrics = 4 * model.metrics.sizes["metric"]
    assert len(rows) == n_metrics + 4 * 4
    _, metric, *values = rows[0]
    np.testing.assert_allclose(
        [float(v) for v in values], model.metrics.isel(band=0).sel(metric=metric), atol=5e-5
    )
    assert [r[1] for r in rows[n_metrics : n_metrics + 4]] == [
        "coverage_1", "coverage_1.96", "coverage_2.58", "nll",
    ]  # fmt: skip
    assert float(rows[n_metrics + 1][3]) == 0.95  # nominal
    # The JSON holds fit's table, to float rounding, and what was scored.
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert (scores["split"], scores["patches"]) == ("test", model.patches["test"])
    assert (scores["patch_size"], scores["sampling_from"]) == (16, "model")
    for band in model.metrics["band"].values:
        for metric in model.metrics["metric"].values:
            for stage in model.metrics["stage"].values:
                expected = float(model.metrics.sel(band=band, metric=metric, stage=stage))
                got = scores["metrics"][band][metric][stage]
                assert abs(got - expected) < 1e-6, (band, metric, stage)
    nll = float(model.calibration_scores.sel(stage="after", band="B4", measure="nll"))
    assert abs(scores["calibration"]["B4"]["nll"] - nll) < 1e-6
    assert scores["nominal_coverage"]["coverage_1.96"] == 0.95
    # The CSV: one row per value, the same values.
    _ok(xh(*args, "-o", tmp_path / "scores.csv"))
    table = pd.read_csv(tmp_path / "scores.csv")
    rmse = table[(table["table"] == "metrics") & (table["metric"] == "rmse")]
    rmse = rmse.set_index(["band", "stage"])["value"]
    expected = model.metrics.sel(metric="rmse").to_series()
    np.testing.assert_allclose(rmse.loc[expected.index].values, expected.values, atol=1e-6)
    cal = table[table["table"] == "calibration"]
    assert len(cal) == 4 * 4 and cal["stage"].isna().all()


def test_evaluate_test_split_follows_the_sampling_fit_recorded(files, tmp_path):
    # fit's own --test-fraction and --seed, recorded in the model file: evaluate's test
    # split, given no sampling option, is fit's, and its table is fit's.
    path = tmp_path / "m.safetensors"
    fitted = "--patch-size", "16", "--test-fraction", "0.3", "--seed", "3"
    pair_args = files["src"], files["ref"], "--mask", files["mask"], "--quiet"
    _ok(xh("fit", *pair_args, "--method", "linear", *fitted, "--out", path))
    model = xharmonise.load(path)
    assert model.sampling == {
        "patch_size": 16,
        "test_fraction": 0.3,
        "max_patches": None,
        "seed": 3,
    }
    assert (
        "sampling: patches of 16 px, 0.3 held out, no cap, seed 3" in _ok(xh("info", path)).stdout
    )
    _ok(xh("evaluate", *pair_args, "-m", path, "--split", "test", "-o", tmp_path / "s.json"))
    scores = json.loads((tmp_path / "s.json").read_text())
    assert (scores["test_fraction"], scores["seed"]) == (0.3, 3)
    assert scores["patches"] == model.patches["test"]
    got = scores["metrics"]["B4"]["rmse"]["model"]
    assert abs(got - float(model.metrics.sel(band="B4", metric="rmse", stage="model"))) < 1e-6


# --------------------------------------------------------------------------- report, demo
def test_report_with_source(files, linear_fit, tmp_path):
    model, _ = linear_fit
    out = tmp_path / "report.html"
    proc = _ok(xh("report", model, "--out", out, "--src", files["src"], "-q"))
    assert proc.stdout.strip() == f"wrote {out}"
    html = out.read_text()
    assert "<html" in html.lower()
    # Every image the page shows exists (inline data or a file next to it).
    for ref in re.findall(r'<img[^>]+src="([^"]+)"', html):
        assert ref.startswith("data:image/") or (out.parent / ref).is_file(), ref
    # The report maps the applicability of the model's domain and shows its calibration.
    figures = {p.stem for p in (tmp_path / "report_files").glob("*.png")}
    assert {"applicability_map", "reliability"} <= figures


@pytest.mark.slow
def test_demo_tiny(tmp_path):
    out = tmp_path / "demo"
    proc = _ok(
        xh(
            "demo", "--out", out, "--size", "400", "--patch-size", "16", "--iterations", "4",
            "--chunks", "128", "--quiet",
        )
    )  # fmt: skip
    assert {p.name for p in out.iterdir()} >= {
        "harmonised.zarr",
        "model.safetensors",
        "report.html",
        "inputs",
    }
    back = xr.open_zarr(out / "harmonised.zarr")
    assert set(back.data_vars) == {"prediction", "variance"}  # BCNet + variance by default
    assert back["prediction"].shape == (4, 400, 400)
    model = xharmonise.load(out / "model.safetensors")
    assert (model.method, model.variance) == ("bcnet", True)
    assert "explained_variance" in proc.stdout  # the metrics table
    # The truth check ran: a linear map at 2 m beats the untouched TOA source.
    found = re.search(r"RMSE initial ([\d.]+), linear ([\d.]+), bcnet ([\d.]+)", proc.stdout)
    assert found, proc.stdout
    initial, linear, _ = map(float, found.groups())
    assert linear < initial
    assert re.search(r"shift by filter: \([+-]", proc.stdout), proc.stdout


def test_report_refuses_its_destination_before_drawing(files, linear_fit, capsys):
    model, _ = linear_fit
    # --src with garbage would fail when read: the destination is refused first.
    for out, says in ((files["folder"], "is a folder"), (files["garbage"] / "r.html", "is a file")):
        code = main(["report", str(model), "--src", str(files["garbage"]), "-o", str(out)])
        assert code == 1 and says in capsys.readouterr().err


def test_demo_refuses_bad_options_before_simulating_anything(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(InputValueError, match="method='linear' has no variance head"):
        demo.run(out, method="linear", variance=True, echo=lambda *a: None)
    with pytest.raises(InputValueError, match="patch_size=0"):
        demo.run(out, patch_size=0, echo=lambda *a: None)
    with pytest.raises(UnknownMethodError):
        demo.run(out, method="forest", echo=lambda *a: None)
    assert not out.exists()


def test_demo_on_given_files(files, linear_fit, tmp_path):
    proc = _ok(
        xh(
            "demo", "--src", files["src"], "--ref", files["ref"], "--mask", files["mask"],
            "--method", "linear", "--patch-size", "16", "--out", tmp_path, "-q",
        )
    )  # fmt: skip
    # No --no-variance needed: the variance head defaults to on only where one exists.
    # Nothing simulated, nothing scored against a truth that real data does not have.
    assert {p.name for p in tmp_path.iterdir()} == {
        "harmonised.zarr",
        "model.safetensors",
        "report.html",
        "report_files",
    }
    assert "simulator" not in proc.stdout
    # The same fit as `xharmonise fit` on the same files.
    model, _ = linear_fit
    np.testing.assert_array_equal(
        xharmonise.load(tmp_path / "model.safetensors").linear, xharmonise.load(model).linear
    )
    assert xr.open_zarr(tmp_path / "harmonised.zarr")["prediction"].shape == (4, 400, 400)


# --------------------------------------------------------------------------- info MODEL
@pytest.fixture(scope="module")
def dated_model(tmp_path_factory) -> Path:
    # Fitted in the library (test_cli_series.py fits series from files). The nearest
    # date is 90 % cloudy, so "auto" uses two dates and the test split has no pixel of
    # the first (its per-date RMSE is printed as "-").
    s = simulate_series((400, 400), seed=0, days=(-9, -1, 3), ref_clouds=[0.1, 0.9, 0.1])
    model = xharmonise.fit(
        s.src, s.ref, method="linear", mask=s.mask, patch_size=16, progress=False
    )
    return model.save(tmp_path_factory.mktemp("dated") / "dated.safetensors")


def test_info_on_a_model_prints_its_dates_and_rmse_per_date(dated_model):
    out = _ok(xh("info", dated_model)).stdout
    model = xharmonise.load(dated_model)
    record = model.fit_report.dates
    assert out.startswith(repr(model) + "\ntest-split metrics")
    assert f"reference dates: source {record['source']}, policy auto within ±30 days" in out
    for date in record["used"]:  # each date used with its training pixels and patches
        row = next(line.split() for line in out.splitlines() if line.startswith(date))
        assert row[-2:] == [str(record["train_pixels"][date]), str(record["train_patches"][date])]
    rmse = model.fit_report.date_metrics.sel(metric="rmse", band="B8")
    for stage in ("linear", "model"):
        line = next(v for v in out.splitlines() if re.match(rf"^B8\s+{stage}\s", v))
        expected = ["-" if np.isnan(v) else f"{v:.4f}" for v in rmse.sel(stage=stage).values]
        assert line.split()[2:] == expected


def test_info_on_a_single_date_model_is_what_fit_printed(linear_fit):
    path, proc = linear_fit
    out = _ok(xh("info", path)).stdout
    assert "reference dates" not in out and "reference dates" not in proc.stdout
    # fit prints the model, its metrics and shifts, then where it wrote the file.
    assert out.splitlines() == proc.stdout.splitlines()[:-1]
