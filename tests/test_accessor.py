"""The ``.harmonise`` accessor: the free functions' signatures, every argument forwarded."""

import importlib.metadata
import inspect
import tomllib
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import xharmonise
from xharmonise import api
from xharmonise.simulate import simulate_pair

ENTRIES = ["fit", "predict", "evaluate", "estimate_shift"]


@pytest.fixture(scope="module")
def pair():
    return simulate_pair((200, 200), seed=0)


def _parameters(func) -> list[tuple[str, object, object, object]]:
    # eval_str: both modules postpone annotations, so compare the types, not their spelling.
    sig = inspect.signature(func, eval_str=True)
    return [(p.name, p.kind, p.default, p.annotation) for p in sig.parameters.values()]


@pytest.mark.parametrize("name", ENTRIES)
@pytest.mark.parametrize("kind", ["DataArray", "Dataset"])
def test_signature_is_the_free_functions_less_the_source(pair, name, kind):
    obj = pair.src if kind == "DataArray" else pair.src.to_dataset(name="src")
    free = _parameters(getattr(api, name))
    assert free[0][0] == "src"
    assert _parameters(getattr(obj.harmonise, name)) == free[1:]
    assert _parameters(getattr(xharmonise, name)) == free
    sig = inspect.signature(getattr(obj.harmonise, name), eval_str=True)
    assert (
        sig.return_annotation
        == inspect.signature(getattr(api, name), eval_str=True).return_annotation
    )
    # help() shows the parameters, not **kwargs.
    assert "kwargs" not in str(sig)


@pytest.mark.parametrize("name", ENTRIES)
def test_every_argument_is_forwarded_by_name(pair, name, monkeypatch):
    # A recorder in place of the free function: each parameter gets its own marker, so a
    # dropped, swapped or defaulted argument shows. (The free function is ours; nothing
    # of xarray is replaced.)
    calls = []
    monkeypatch.setattr(api, name, lambda *args, **kwargs: calls.append((args, kwargs)))
    params = list(inspect.signature(getattr(pair.src.harmonise, name)).parameters.values())
    first, *options = params
    markers = {p.name: object() for p in params}
    getattr(pair.src.harmonise, name)(
        markers[first.name], **{p.name: markers[p.name] for p in options}
    )
    [(args, kwargs)] = calls
    assert args[0] is pair.src
    assert args[1] is markers[first.name]
    assert kwargs.keys() == {p.name for p in options}
    assert all(kwargs[k] is markers[k] for k in kwargs)


def test_date_options_reach_fit_through_the_accessor():
    from xharmonise.simulate import simulate_series

    series = simulate_series((200, 200), days=(-2, 1), ref_clouds=0.1)
    options = dict(method="linear", mask=series.mask, patch_size=8, dates="all", max_days=5)
    via = series.src.harmonise.fit(series.ref, src_time="2024-06-16", **options)
    free = xharmonise.fit(series.src, series.ref, src_time="2024-06-16", **options)
    assert via.dates == free.dates and via.dates["policy"] == "all"
    assert via.dates["source"] == "2024-06-16T00:00:00"


def test_fit_and_predict_through_the_accessor_equal_the_free_functions(pair):
    # Every option away from its default, so that a dropped one changes the model.
    mask = xr.zeros_like(pair.mask)
    mask[:8, :8] = True  # one cloudy corner: fewer valid patches
    options = dict(
        method="linear",
        variance=False,
        mask=mask,
        bands={"B0": "B2", "B1": "B3", "B2": "B4"},
        scale=(1.0, 1.0),
        offset=(0.0, 0.0),
        iterations=3,
        batch_size=4,
        patch_size=8,
        test_fraction=0.3,
        max_patches=12,
        seed=5,
        device="cpu",
        progress=False,
        coregister=False,
        # Only a reference time series uses these (test below): here they are inert.
        src_time="2024-06-15",
        dates="nearest",
        max_days=10.0,
    )
    assert options.keys() == inspect.signature(api.fit).parameters.keys() - {"src", "ref"}
    via = pair.src.harmonise.fit(pair.ref, **options)
    free = xharmonise.fit(pair.src, pair.ref, **options)
    default = xharmonise.fit(pair.src, pair.ref, method="linear", patch_size=8)
    np.testing.assert_array_equal(via.linear, free.linear)
    xr.testing.assert_identical(via.metrics, free.metrics)
    assert via.patches == free.patches
    assert via.patches != default.patches  # the options did reach fit
    assert via.src_bands == free.src_bands
    assert list(via.src_bands) == ["B0", "B1", "B2"]
    for key in free.samples:
        np.testing.assert_array_equal(via.samples[key], free.samples[key])

    src = pair.src.sel(band=["B0", "B1", "B2"])
    for kwargs in ({}, {"with_variance": False, "scale": 1.0, "offset": 0.0}):
        xr.testing.assert_identical(
            src.harmonise.predict(via, **kwargs), xharmonise.predict(src, via, **kwargs)
        )


def test_estimate_shift_through_the_accessor_equals_the_free_function():
    pair = simulate_pair((600, 600), seed=0, shift=(4.0, -2.0))
    options = dict(window=24, max_windows=20, max_shift=3.0, min_windows=4, seed=2)
    via = pair.src.harmonise.estimate_shift(pair.ref, **options)
    free = xharmonise.estimate_shift(pair.src, pair.ref, **options)
    assert (via.east, via.north, via.confidence) == (free.east, free.north, free.confidence)
    assert len(via.windows) == len(free.windows) <= 20


def test_version_is_the_projects_and_goes_into_every_model():
    pyproject = Path(__file__).parents[1] / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text())["project"]["version"]
    assert xharmonise.__version__ == declared == importlib.metadata.version("xharmonise")
    pair = simulate_pair((200, 200), seed=0)
    model = xharmonise.fit(pair.src, pair.ref, method="linear", patch_size=8, progress=False)
    assert model.fit_report.versions["xharmonise"] == declared


def test_evaluate_through_the_accessor_equals_the_free_function(pair):
    model = xharmonise.fit(pair.src, pair.ref, method="linear", patch_size=8, progress=False)
    mask = xr.zeros_like(pair.mask)
    mask[:8, :8] = True
    # Every option away from its default, so that a dropped one changes the scores.
    options = dict(
        mask=mask,
        bands={"B0": "B2", "B1": "B3", "B2": "B4", "B3": "B8"},
        scale=(1.0, 1.0),
        offset=(0.0, 0.0),
        split="test",
        patch_size=8,
        test_fraction=0.3,
        max_patches=12,
        seed=5,
        coregister=False,
        src_time="2024-06-15",
        dates="nearest",
        max_days=10.0,
    )
    assert options.keys() == inspect.signature(api.evaluate).parameters.keys() - {
        "src",
        "ref",
        "model",
    }
    via = pair.src.harmonise.evaluate(pair.ref, model, **options)
    xr.testing.assert_identical(via, xharmonise.evaluate(pair.src, pair.ref, model, **options))
    assert via.attrs["patches"] == 4  # 30 % of 12
