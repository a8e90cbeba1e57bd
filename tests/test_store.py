import inspect
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import dask
import numpy as np
import pytest
import rioxarray  # noqa: F401  (.rio on the reopened store)
import xarray as xr
import zarr
from conftest import FailAfter
from distributed import Client

import xharmonise
from xharmonise.errors import StoreExistsError
from xharmonise.simulate import simulate_pair
from xharmonise.store import describe


@pytest.fixture(scope="module")
def prediction():
    pair = simulate_pair((600, 600), seed=5, nodata_border=20, chunks=256)
    model = xharmonise.fit(pair.src, pair.ref, method="linear", patch_size=16)
    return pair, xharmonise.predict(pair.src, model)


def test_round_trip_keeps_values_crs_and_transform(prediction, tmp_path):
    pair, out = prediction
    path = tmp_path / "out.zarr"
    xharmonise.to_zarr(out, str(path))
    back = xr.open_zarr(path)
    assert back["prediction"].dtype == np.float32
    np.testing.assert_array_equal(back["prediction"].values, out["prediction"].values)
    assert np.isnan(back["prediction"].values[:, :20]).all()
    assert back.rio.crs == pair.src.rio.crs
    assert back["prediction"].rio.transform() == pair.src.rio.transform()
    assert list(back["band"].values) == ["B2", "B3", "B4", "B8"]


def test_store_is_v3_sharded_and_compressed(prediction, tmp_path):
    _, out = prediction
    path = tmp_path / "out.zarr"
    xharmonise.to_zarr(out, str(path))
    arr = zarr.open_group(path, mode="r")["prediction"]
    assert arr.metadata.zarr_format == 3
    assert arr.shards == (4, 256, 256)
    assert arr.chunks == (1, 256, 256)
    names = [c.to_dict()["name"] for c in arr.metadata.codecs]
    assert names == ["sharding_indexed"]
    inner = arr.metadata.codecs[0].codecs
    assert "zstd" in [c.to_dict()["name"] for c in inner]


@pytest.mark.parametrize("level", [None, 1])
def test_lz4_store_reads_back_identically_with_its_codec(prediction, tmp_path, level):
    pair, out = prediction
    path = tmp_path / "lz4.zarr"
    xharmonise.to_zarr(out, str(path), compressor="lz4", compression_level=level)
    inner = zarr.open_group(path, mode="r")["prediction"].metadata.codecs[0].codecs
    (blosc,) = [c.to_dict() for c in inner if c.to_dict()["name"] == "blosc"]
    assert blosc["configuration"]["cname"] == "lz4"
    assert blosc["configuration"]["shuffle"] == "shuffle"
    assert blosc["configuration"]["clevel"] == (5 if level is None else level)
    back = xr.open_zarr(path)
    for name in out.data_vars:
        np.testing.assert_array_equal(back[name].values, out[name].values)
    assert back.rio.crs == pair.src.rio.crs
    assert back["prediction"].rio.transform() == pair.src.rio.transform()


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"compressor": "blosc"}, "compressor"),
        ({"compressor": "lz4", "compression_level": 22}, "compression_level"),
        ({"compressor": "zstd", "compression_level": 23}, "compression_level"),
    ],
)
def test_a_compressor_or_level_it_does_not_have_is_refused(prediction, tmp_path, options, says):
    _, out = prediction
    with pytest.raises(xharmonise.InputValueError, match=says):
        xharmonise.to_zarr(out, str(tmp_path / "x.zarr"), **options)
    assert not (tmp_path / "x.zarr").exists()


def test_existing_store_is_refused_unless_mode_w(prediction, tmp_path):
    _, out = prediction
    path = str(tmp_path / "out.zarr")
    xharmonise.to_zarr(out, path)
    with pytest.raises(StoreExistsError, match="mode='w'"):
        xharmonise.to_zarr(out, path)
    doubled = out * 2
    doubled.attrs = out.attrs
    xharmonise.to_zarr(doubled, path, mode="w")
    back = xr.open_zarr(path)
    np.testing.assert_array_equal(back["prediction"].values, 2 * out["prediction"].values)


def test_memory_url_and_numpy_input():
    ds = xr.Dataset({"prediction": (("band", "y", "x"), np.ones((2, 30, 40), np.float32))})
    xharmonise.to_zarr(ds, "memory://xh-test.zarr")
    back = xr.open_zarr("memory://xh-test.zarr")
    np.testing.assert_array_equal(back["prediction"].values, 1)


# --- Resumable writes ------------------------------------------------------------------

_CHILD = """
import sys, threading, time
import dask
import xharmonise
from xharmonise.simulate import simulate_pair

# The first three blocks pass, every later one waits for ever: the parent kills this
# process with exactly three shards written, however slowly a loaded machine runs it.
# One thread per region, so that the waiting blocks never starve the passed ones' writes.
passed, lock = [0], threading.Lock()

def gate(block):
    with lock:
        passed[0] += 1
        ok = passed[0] <= 3
    while not ok:
        time.sleep(60)
    return block

pair = simulate_pair((256, 256), seed=5, nodata_border=10, chunks=64)
out = xharmonise.predict(pair.src, xharmonise.load(sys.argv[1]))
# meta= so that dask does not call the gate on a dummy block to learn the output type.
data = out["prediction"].data
out["prediction"] = out["prediction"].copy(data=data.map_blocks(gate, meta=data._meta))
with dask.config.set(scheduler="threads", num_workers=16):
    xharmonise.to_zarr(out, sys.argv[2])
"""


@pytest.fixture(scope="module")
def small_prediction(tmp_path_factory):
    """A 4 x 4-region prediction (64-pixel shards) and the saved model that made it."""
    pair = simulate_pair((256, 256), seed=5, nodata_border=10, chunks=64)
    model = xharmonise.fit(pair.src, pair.ref, method="linear", patch_size=16)
    path = model.save(tmp_path_factory.mktemp("model") / "linear.safetensors")
    return path, xharmonise.predict(pair.src, model)


def _done(path) -> set[str]:
    done = path / ".xharmonise" / "done"
    return {p.name for p in done.iterdir()} if done.is_dir() else set()


def _shard_mtimes(path) -> dict[str, int]:
    shards = path / "prediction" / "c" / "0"
    return {f"{p.parent.name}.{p.name}": p.stat().st_mtime_ns for p in shards.glob("*/*")}


def test_killed_write_resumes_to_identical_arrays(small_prediction, tmp_path):
    model_path, out = small_prediction
    store = tmp_path / "killed.zarr"
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    child = subprocess.Popen([sys.executable, str(script), str(model_path), str(store)])
    try:
        # Generous: the child's start-up (imports, simulation) on a loaded machine; only
        # a hung child meets it.
        deadline = time.monotonic() + 300
        while len(_done(store)) < 3 and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    done = _done(store)
    assert len(done) == 3, done
    # An interrupted store exists: it is refused by default, never overwritten.
    with pytest.raises(StoreExistsError, match="resume=True"):
        xharmonise.to_zarr(out, str(store))
    before = _shard_mtimes(store)
    time.sleep(0.01)  # so that a rewritten shard gets a later mtime
    xharmonise.to_zarr(out, str(store), resume=True)
    after = _shard_mtimes(store)
    rewritten = {k for k in after if after[k] != before.get(k)}
    # A shard being written when the child died leaves zarr's temporary file; it is gone.
    assert not list(store.rglob("*.partial"))
    assert len(after) == 16
    assert rewritten.isdisjoint(done)
    assert rewritten | done == set(after)
    assert not (store / ".xharmonise").exists()

    clean = tmp_path / "clean.zarr"
    xharmonise.to_zarr(out, str(clean))
    back, ref = xr.open_zarr(store), xr.open_zarr(clean)
    np.testing.assert_array_equal(back["prediction"].values, ref["prediction"].values)
    np.testing.assert_array_equal(back["prediction"].values, out["prediction"].values)
    assert back.rio.crs == ref.rio.crs
    assert zarr.open_group(store, mode="r").metadata.consolidated_metadata is not None


def _interrupted(out: xr.Dataset, store: str, n: int, **kwargs) -> None:
    failing = out.copy()
    data = out["prediction"].data.map_blocks(FailAfter(n), dtype=np.float32)
    failing["prediction"] = out["prediction"].copy(data=data)
    with pytest.raises(RuntimeError, match="interrupted"):
        xharmonise.to_zarr(failing, store, **kwargs)


def test_resume_writes_only_missing_regions(small_prediction, tmp_path):
    _, out = small_prediction
    store = tmp_path / "out.zarr"
    _interrupted(out, str(store), 6)
    done = _done(store)
    assert 0 < len(done) < 16
    before = _shard_mtimes(store)
    time.sleep(0.01)
    xharmonise.to_zarr(out, str(store), resume=True)
    after = _shard_mtimes(store)
    assert {k for k in done if after[k] != before[k]} == set()
    assert len([k for k in after if after[k] != before.get(k)]) == 16 - len(done)
    np.testing.assert_array_equal(
        xr.open_zarr(store)["prediction"].values, out["prediction"].values
    )


def test_resume_removes_a_killed_writers_temporary_files(small_prediction, tmp_path):
    _, out = small_prediction
    store = tmp_path / "out.zarr"
    _interrupted(out, str(store), 6)
    # What zarr's local store leaves when its process dies between write and rename.
    shard = next(p for p in (store / "prediction" / "c" / "0").glob("*/*"))
    partial = shard.with_suffix(".0123456789abcdef0123456789abcdef.partial")
    partial.write_bytes(b"half a shard")
    mine = shard.parent / "notes.partial"  # not zarr's: left alone
    mine.write_text("user file")
    xharmonise.to_zarr(out, str(store), resume=True)
    assert not partial.exists()
    assert mine.read_text() == "user file"
    np.testing.assert_array_equal(
        xr.open_zarr(store)["prediction"].values, out["prediction"].values
    )


def test_resume_on_missing_or_complete_store(small_prediction, tmp_path):
    _, out = small_prediction
    store = tmp_path / "out.zarr"
    xharmonise.to_zarr(out, store, resume=True)  # missing: a fresh write
    np.testing.assert_array_equal(
        xr.open_zarr(store)["prediction"].values, out["prediction"].values
    )
    before = _shard_mtimes(store)
    xharmonise.to_zarr(out, store, resume=True)  # complete: nothing to do
    assert _shard_mtimes(store) == before


def test_resume_refuses_another_layout(small_prediction, tmp_path):
    _, out = small_prediction
    store = str(tmp_path / "out.zarr")
    _interrupted(out, store, 6)
    with pytest.raises(StoreExistsError, match="mode='w'"):
        xharmonise.to_zarr(out.chunk({"y": 128, "x": 128}), store, resume=True)
    with pytest.raises(StoreExistsError, match="coordinates differ"):
        xharmonise.to_zarr(out.assign_coords(y=out.y + 1), store, resume=True)
    with pytest.raises(ValueError, match="resume"):
        xharmonise.to_zarr(out, store, resume=True, mode="w")
    # mode="w" replaces the unfinished store, markers included.
    xharmonise.to_zarr(out, store, mode="w")
    assert not (tmp_path / "out.zarr" / ".xharmonise").exists()
    np.testing.assert_array_equal(
        xr.open_zarr(store)["prediction"].values, out["prediction"].values
    )


# --- Progress and description ----------------------------------------------------------


@contextmanager
def _scheduler(kind: str) -> Iterator[None]:
    """The synchronous local scheduler, or a real in-process ``distributed`` client."""
    if kind == "local":
        yield
        return
    with (
        Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as c,
        dask.config.set(scheduler=c),
    ):
        yield


@pytest.mark.parametrize("kind", ["local", "distributed"])
def test_progress_bar_by_default_on_stderr_and_silence_when_false(
    small_prediction, tmp_path, capfd, kind
):
    _, out = small_prediction
    assert inspect.signature(xharmonise.to_zarr).parameters["progress"].default is True
    # fit's default too: both are long operations a notebook user wants to watch.
    assert inspect.signature(xharmonise.fit).parameters["progress"].default is True
    with _scheduler(kind):
        capfd.readouterr()
        xharmonise.to_zarr(out, tmp_path / "quiet.zarr", progress=False)
        assert capfd.readouterr() == ("", "")
        xharmonise.to_zarr(out, tmp_path / "loud.zarr")
        captured = capfd.readouterr()
    assert captured.out == ""  # stdout stays for results
    # Dask's local ProgressBar ends on "100% Completed"; distributed's text bar on a full
    # bar with its own wording.
    assert ("100% Completed" if kind == "local" else "100%") in captured.err
    for name in ("quiet.zarr", "loud.zarr"):
        np.testing.assert_array_equal(
            xr.open_zarr(tmp_path / name)["prediction"].values, out["prediction"].values
        )


def test_describe_complete_store(small_prediction, tmp_path):
    _, out = small_prediction
    path = tmp_path / "out.zarr"
    xharmonise.to_zarr(out, path)
    info = describe(path)
    assert (info.complete, info.regions_done, info.regions_total) == (True, 16, 16)
    assert info.variables["prediction"] == {
        "dims": ("band", "y", "x"),
        "shape": (4, 256, 256),
        "dtype": "float32",
        "chunks": (1, 64, 64),
        "shards": (4, 64, 64),
    }
    assert info.sizes == {"band": 4, "y": 256, "x": 256}
    assert info.crs == "EPSG:32631"
    assert info.transform == tuple(out["prediction"].rio.transform())[:6]
    assert info.bands == ["B2", "B3", "B4", "B8"]
    assert info.attrs["method"] == "linear"
    assert info.attrs["source_bands"] == ["B0", "B1", "B2", "B3"]


def test_describe_interrupted_and_missing_stores(small_prediction, tmp_path):
    _, out = small_prediction
    store = tmp_path / "out.zarr"
    _interrupted(out, str(store), 6)
    info = describe(store)
    assert not info.complete
    assert info.regions_done == len(_done(store)) and 0 < info.regions_done < 16
    assert info.regions_total == 16
    assert info.variables["prediction"]["shape"] == (4, 256, 256)
    with pytest.raises(FileNotFoundError, match="no Zarr store"):
        describe(tmp_path / "absent.zarr")
