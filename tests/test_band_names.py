"""Reference band names as the Sentinel-2 loaders spell them pick each band's own MTF."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import xharmonise
from xharmonise import psf
from xharmonise.errors import UnknownBandWarning
from xharmonise.simulate import simulate_pair


@pytest.fixture(scope="module")
def pair():
    return simulate_pair((200, 200), seed=0)


def _fit(pair, names, **kw):
    ref = pair.ref.assign_coords(band=names)
    return xharmonise.fit(pair.src, ref, method="linear", patch_size=8, **kw)


@pytest.mark.parametrize(
    "names",
    [
        ["blue", "green", "red", "nir"],  # Earth Search (odc-stac, stackstac)
        ["B02", "B03", "B04", "B08"],  # odc-stac's band ids
        ["FRE_B2", "FRE_B3", "FRE_B4", "FRE_B8"],  # Theia's flat reflectance files
        ["b2", "b3", "b4", "b8"],
    ],
)
def test_loader_spellings_get_the_sentinel2_mtf_of_their_band(pair, names):
    # Under pytest's warnings-as-errors: a recognised name raises no UnknownBandWarning.
    model = _fit(pair, names)
    expected = psf.reference_sigmas(["B2", "B3", "B4", "B8"], 5)
    np.testing.assert_allclose(model.sigmas, expected)
    # Four different MTFs, none the default: each band got its own.
    assert len(set(np.round(model.sigmas, 6))) == 4
    assert psf.reference_sigmas(["x"], 5)[0] not in model.sigmas
    assert model.ref_bands == tuple(names)  # the user's names are kept


def test_unknown_names_keep_the_default_with_one_warning_naming_them():
    # Large enough for co-registration's windows, which read the MTF too.
    pair = simulate_pair((400, 400), seed=11)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = _fit(pair, ["B2", "pan", "B4", "4"], coregister=True)
    unknown = [w for w in caught if issubclass(w.category, UnknownBandWarning)]
    assert len(unknown) == 1  # once per fit, though co-registration reads the MTF too
    message = str(unknown[0].message)
    assert "['pan', '4']" in message and "assign_coords" in message
    default = psf.reference_sigmas(["pan"], 5)[0]
    assert model.sigmas[1] == model.sigmas[3] == default
    assert model.sigmas[0] != default and model.sigmas[2] != default
    assert unknown[0].filename == __file__  # points at the caller's line


def test_s2_band_refuses_near_misses():
    for name in ("B10", "B13", "B8B", "BB2", "nir07", "", "red edge"):
        assert psf.s2_band(name) is None, name


def test_estimate_shift_warns_too_and_a_refused_pair_gets_its_error_only(pair):
    ref = pair.ref.assign_coords(band=["1", "2", "3", "4"])
    big = simulate_pair((600, 600), shift=(4.0, -3.0), seed=1)
    with pytest.warns(UnknownBandWarning, match=r"\['1', '2', '3', '4'\]"):
        xharmonise.estimate_shift(big.src, big.ref.assign_coords(band=["1", "2", "3", "4"]))
    # Source and reference swapped: refused for its grid, before any word on band names
    # (pytest's warnings-as-errors would turn a warning into the failure).
    with pytest.raises(xharmonise.GridError, match="coarser than the reference"):
        xharmonise.fit(ref, pair.src, method="linear", patch_size=8)
