"""Prediction and writing on a real two-process Dask cluster."""

from __future__ import annotations

from collections.abc import Iterator

import dask
import numpy as np
import pytest
import xarray as xr
from conftest import local_cluster
from distributed import Client

import xharmonise
from xharmonise.simulate import simulate_pair


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with local_cluster() as client:
        yield client


@pytest.fixture(scope="module")
def calibnet():
    pair = simulate_pair((400, 400), seed=1, chunks=128)
    model = xharmonise.fit(
        pair.src, pair.ref, method="calibnet", iterations=10, patch_size=16, progress=False
    )
    return pair, model


def test_predict_on_cluster_equals_threads(client, calibnet):
    pair, model = calibnet
    lazy = xharmonise.predict(pair.src, model)
    # The graph holds the weights once, not once per chunk.
    graph = dict(lazy["prediction"].data.__dask_graph__())
    holding = [k for k, v in graph.items() if "'state':" in repr(v)[:100_000]]
    assert len(holding) == 1, holding
    with dask.config.set(scheduler="threads"):
        local = lazy.compute()
    remote = client.compute(lazy).result()
    for name in local.data_vars:
        a, b = remote[name].values, local[name].values
        # BLAS may round a pixel differently with its position in a batch: a few ulps.
        np.testing.assert_allclose(a, b, rtol=2e-6)
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))


def test_to_zarr_on_cluster(client, calibnet, tmp_path):
    pair, model = calibnet
    lazy = xharmonise.predict(pair.src, model)
    store = tmp_path / "out.zarr"
    with dask.config.set(scheduler=client):
        xharmonise.to_zarr(lazy, store)
    back = xr.open_zarr(store)
    with dask.config.set(scheduler="threads"):
        local = lazy.compute()
    np.testing.assert_allclose(back["prediction"].values, local["prediction"].values, rtol=2e-6)
    assert back.rio.crs == pair.src.rio.crs
    assert not (store / ".xharmonise").exists()
