"""Shared fixtures: simulated pairs with known truth, both NumPy- and Dask-backed."""

from __future__ import annotations

from pathlib import Path

import dask
import pytest

from xharmonise.simulate import simulate_pair

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(name: str) -> Path:
    """Path of a real-data folder, skipping the test with a reason when it is absent."""
    path = DATA / name
    if not path.is_dir():
        pytest.skip(f"real test data {path} is absent (it lives in ../shared/data)")
    return path


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
