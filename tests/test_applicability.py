"""Applicability: a model fitted on a scene without water and bright roofs ranks those
pixels of a scene with them above the familiar ones and warns naming their share; on its
own scene it flags almost nothing and stays quiet. The truth is the simulator's: the
pixels where a scene and the same scene without those covers differ."""

from __future__ import annotations

import re

import dask.array as da
import numpy as np
import pytest

import xharmonise
from xharmonise.applicability import OUT_OF_DOMAIN, WARN_SHARE, Domain, fit_domain
from xharmonise.errors import InputTypeError, InputValueError, OutOfDomainWarning
from xharmonise.simulate import simulate_pair

LEFT_OUT = ("water", "bright_roof")
SHAPE = (400, 400)


def _auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """ROC AUC of ranking ``positive`` above ``negative`` (ties count one half)."""
    values = np.concatenate([positive, negative])
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    # Average ranks over ties.
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]
    n1, n0 = len(positive), len(negative)
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


@pytest.fixture(scope="module")
def dry():
    """The training scene: no water, no bright roofs."""
    return simulate_pair(SHAPE, seed=0, without=LEFT_OUT)


@pytest.fixture(scope="module")
def model(dry):
    # The domain does not depend on the method: the linear one fits in a blink.
    return xharmonise.fit(dry.src, dry.ref, method="linear", patch_size=16)


@pytest.fixture(scope="module")
def scene():
    """Another place with every cover, and which of its pixels are water or bright roof."""
    full = simulate_pair(SHAPE, seed=1)
    without = simulate_pair(SHAPE, seed=1, without=LEFT_OUT)
    novel = (full.truth.reflectance != without.truth.reflectance).any("band").values
    return full, novel


def test_unfamiliar_covers_rank_above_familiar_ones_and_warn_naming_their_share(model, scene):
    full, novel = scene
    assert 0.02 < novel.mean() < 0.2  # the scene holds water and bright roofs
    with pytest.warns(OutOfDomainWarning) as caught:
        out = xharmonise.predict(full.src, model, with_applicability=True)
    a = out["applicability"].values
    assert a.dtype == np.float32 and out["applicability"].dims == ("y", "x")
    assert np.isfinite(a).all() and ((a >= 0) & (a <= 1)).all()
    # Lower applicability = farther out: rank the new covers first.
    auc = _auc(-a[novel], -a[~novel])
    assert auc >= 0.95, auc
    flagged = float((a < OUT_OF_DOMAIN).mean())
    assert flagged > WARN_SHARE
    (warning,) = caught
    named = float(re.match(r"([\d.]+)% of the source pixels", str(warning.message)).group(1))
    assert named == pytest.approx(100 * flagged, abs=0.05)  # printed to one decimal
    # Most of what is flagged is what the model never saw.
    assert novel[a < OUT_OF_DOMAIN].mean() > 0.8


def test_its_own_scene_is_in_domain_and_predict_stays_quiet(model, dry):
    # filterwarnings = error: any OutOfDomainWarning fails the test.
    out = xharmonise.predict(dry.src, model, with_applicability=True)
    a = out["applicability"].values
    assert float((a < OUT_OF_DOMAIN).mean()) < 0.01
    # The scale is the training pixels' tail share: about uniform on pixels like them.
    assert 0.35 < float(np.median(a)) < 0.65


def test_a_dask_source_gives_the_same_values_lazily_on_its_chunks(model, scene):
    full, _ = scene
    lazy_src = full.src.chunk({"band": 2, "y": 128, "x": 96})
    # The lazy check reads a sample of chunks: the share it names is an estimate.
    with pytest.warns(OutOfDomainWarning, match=r"a sample of \d+ valid pixels from 2 of 20"):
        lazy = xharmonise.predict(lazy_src, model, with_applicability=True)
    var = lazy["applicability"]
    assert isinstance(var.data, da.Array) and var.dtype == np.float32
    assert var.chunks == lazy_src.chunks[1:]
    with pytest.warns(OutOfDomainWarning):
        eager = xharmonise.predict(full.src, model, with_applicability=True)
    # Equal to float32 rounding, not bit for bit: the score's matrix products run in
    # BLAS, whose kernels treat a pixel by where it falls in the product (a full tile or
    # an edge), and chunks move that. On an AVX-512 (bf16) EPYC, 0.6 % of the pixels'
    # scores differed in the last place, which the tail's exp makes 1e-6 relative.
    lazy_a, eager_a = var.values, eager["applicability"].values
    np.testing.assert_allclose(lazy_a, eager_a, rtol=1e-5, atol=0)
    assert np.array_equal(np.isnan(lazy_a), np.isnan(eager_a))
    ok = ~np.isnan(eager_a)
    assert np.mean(lazy_a[ok] != eager_a[ok]) < 0.01


def test_no_data_is_nan_and_the_input_is_left_alone(model):
    pair = simulate_pair((120, 120), seed=0, without=LEFT_OUT, nodata_border=6)
    before = pair.src.copy(deep=True)
    out = xharmonise.predict(pair.src, model, with_applicability=True)
    nodata = pair.src.isnull().any("band").values
    assert nodata.any()
    np.testing.assert_array_equal(np.isnan(out["applicability"].values), nodata)
    assert pair.src.identical(before)


def test_the_accessor_forwards_the_option(model, dry):
    out = dry.src.harmonise.predict(model, with_applicability=True)
    direct = xharmonise.predict(dry.src, model, with_applicability=True)
    np.testing.assert_array_equal(out["applicability"].values, direct["applicability"].values)
    assert "applicability" not in dry.src.harmonise.predict(model)


def test_bad_options_are_refused_naming_the_fix(model, dry):
    with pytest.raises(InputTypeError, match="with_applicability"):
        xharmonise.predict(dry.src, model, with_applicability="yes")
    with pytest.raises(InputValueError, match="components"):
        fit_domain(np.zeros((100, 4)), components=0)
    with pytest.raises(InputValueError, match="give more pixels"):
        fit_domain(np.zeros((5, 4)))


def test_the_domain_survives_save_and_load(model, dry, tmp_path):
    back = xharmonise.load(model.save(tmp_path / "m.safetensors"))
    assert isinstance(back.domain, Domain) and back.domain == model.domain
    a = xharmonise.predict(dry.src, back, with_applicability=True)["applicability"]
    b = xharmonise.predict(dry.src, model, with_applicability=True)["applicability"]
    np.testing.assert_array_equal(a.values, b.values)


def test_the_domain_is_measured_at_the_source_resolution(model, dry):
    # Whole training patches of 16 x 16 reference pixels, read as 80 x 80 source pixels
    # (no mask: every pixel): the pixels predict sees, not the 10 m reduction the network
    # trains on, which would flag the source's own 2 m texture and noise.
    dom = model.domain
    assert dom.n_bands == 4 and dom.components > 1
    assert 0 < dom.patches <= model.patches["train"]
    assert dom.pixels == dom.patches * (16 * 5) ** 2
    # Its spread is the source's at 2 m (within the sampling of 14 patches of a scene).
    pixels = dry.src.values.reshape(4, -1).T
    np.testing.assert_allclose(dom.scale, pixels.std(axis=0), rtol=0.15)
