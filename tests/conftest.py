"""Shared fixtures: simulated pairs with known truth, both NumPy- and Dask-backed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dask
import numpy as np
import pytest
from distributed import Client, LocalCluster

from xharmonise.simulate import simulate_pair

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


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
def local_cluster() -> Iterator[Client]:
    """A real two-process Dask cluster (one thread each, no dashboard), closed on exit."""
    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
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
