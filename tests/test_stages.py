"""fit's stages, one by one, against what the simulator knows; and fit is nothing but them."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import xharmonise
from xharmonise import losses, stages, training
from xharmonise.errors import CoregistrationError
from xharmonise.models import METHODS, method
from xharmonise.simulate import simulate_pair

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def shifted():
    return simulate_pair((600, 600), shift=(4.0, -3.0), seed=1)


def test_prepare_pair_measures_and_applies_only_when_asked(shifted):
    paired = stages.reflectance_pair(shifted.src, shifted.ref)
    corrected = stages.prepare_pair(paired, mask=None, coregister=True, measure=False, seed=0)
    assert corrected.applied_shift == pytest.approx((4.0, -3.0), abs=0.5)
    assert corrected.shift_estimate is not None
    assert (corrected.shift_estimate.east, corrected.shift_estimate.north) == (
        corrected.applied_shift
    )
    # The corrected source sits where the reference sees its content.
    assert float(paired.src.x[0] - corrected.paired.src.x[0]) == pytest.approx(4.0, abs=0.5)
    measured = stages.prepare_pair(paired, mask=None, coregister=False, measure=True, seed=0)
    assert measured.applied_shift is None
    assert measured.shift_estimate.east == pytest.approx(4.0, abs=0.5)
    plain = stages.prepare_pair(paired, mask=None, coregister=False, measure=False, seed=0)
    assert plain.shift_estimate is None and plain.applied_shift is None
    # Nothing was read: the stages before the training data stay lazy on lazy inputs.
    lazy = simulate_pair((300, 300), seed=2, chunks=100)
    prepared = stages.prepare_pair(
        stages.reflectance_pair(lazy.src, lazy.ref),
        mask=None,
        coregister=False,
        measure=False,
        seed=0,
    )
    assert prepared.aligned.chunks is not None and prepared.ref.chunks is not None


def test_a_failed_measurement_is_left_out_unless_coregistration_was_asked():
    # 120 x 120 source pixels are 24 reference pixels: too few for any window.
    small = simulate_pair((120, 120), seed=0)
    paired = stages.reflectance_pair(small.src, small.ref)
    pair = stages.prepare_pair(paired, mask=None, coregister=False, measure=True, seed=0)
    assert pair.shift_estimate is None
    with pytest.raises(CoregistrationError):
        stages.prepare_pair(paired, mask=None, coregister=True, measure=False, seed=0)


def test_training_data_is_gathered_once_per_split_for_what_the_method_trains_on():
    pair_ = simulate_pair((400, 400), seed=0, ref_clouds=0.05)
    prepared = stages.prepare_pair(
        stages.reflectance_pair(pair_.src, pair_.ref),
        mask=pair_.mask,
        coregister=False,
        measure=False,
        seed=0,
    )
    data = {
        name: stages.build_training_data(
            prepared, spec, patch_size=8, test_fraction=0.2, max_patches=None, seed=0
        )
        for name, spec in METHODS.items()
    }
    # Every method trains and is scored on the same patches of a pair.
    for d in data.values():
        np.testing.assert_array_equal(d.train_cells, data["linear"].train_cells)
        np.testing.assert_array_equal(d.test_cells, data["linear"].test_cells)
        np.testing.assert_array_equal(d.train.ref, data["linear"].train.ref)
        assert d.counts["partial"] > 0
    d = data["linear"]
    cells = {tuple(c) for c in d.train_cells}
    assert not cells & {tuple(c) for c in d.test_cells}
    assert d.n_val == round(0.1 * len(d.train_cells))
    assert len(d.held_out.ref) == len(d.test_cells)
    for name, d in data.items():
        full = d.train.src_full
        if method(name).trains_on == "full_patches":
            side = 5 * 8 + 2 * d.margin
            assert full.shape == (len(d.train_cells), 4, side, side)
            assert d.held_out.src_full.shape[0] == len(d.test_cells)
            # Its centre, averaged over each reference pixel's 5 x 5 source pixels, is
            # the source seen at 10 m: the same ground as the reference patch.
            centre = full[:, :, d.margin : d.margin + 40, d.margin : d.margin + 40]
            blocks = centre.reshape(len(full), 4, 8, 5, 8, 5).mean(axis=(3, 5))
            assert np.corrcoef(blocks.ravel(), d.train.src.ravel())[0, 1] > 0.95
        else:
            assert full is None


def test_fit_is_its_stages():
    pair = simulate_pair((200, 200), seed=0)
    model = xharmonise.fit(pair.src, pair.ref, method="linear", patch_size=8, seed=4)
    spec = method("linear")
    paired = stages.reflectance_pair(pair.src, pair.ref)
    prepared = stages.prepare_pair(paired, mask=None, coregister=False, measure=False, seed=4)
    data = stages.build_training_data(
        prepared, spec, patch_size=8, test_fraction=0.1, max_patches=None, seed=4
    )
    linear = stages.fit_baseline(data)
    evaluation = stages.evaluate(data, linear, None, paired.ref_bands, seed=4)
    again = stages.assemble(prepared, data, spec, linear, None, evaluation, variance=False)
    np.testing.assert_array_equal(again.linear, model.linear)
    xr.testing.assert_identical(again.metrics, model.metrics)
    assert again.patches == model.patches


def _v1_pair():
    # How tests/data/model-v1-* were fitted (tests/data/README.md).
    return simulate_pair((120, 120), seed=3)


# Float64 results of the same computation on CPUs with other vector units: ~1e-15 apart.
FLOAT64_KERNELS = 1e-12


def test_the_staged_fit_learns_what_release_0_1_0_learned():
    # Behaviour stays the same: the same fit gives the model 0.1.0 saved.
    pair = _v1_pair()
    old = xharmonise.load(DATA / "model-v1-linear.safetensors")
    new = xharmonise.fit(pair.src, pair.ref, method="linear", patch_size=4, progress=False)
    # The same samples exactly; the least squares' float64 sums run in another order on
    # another CPU (AVX-512 against the AVX2 that wrote the file: 2.9e-15 apart, measured).
    np.testing.assert_allclose(new.linear, old.linear, rtol=0, atol=FLOAT64_KERNELS)
    xr.testing.assert_allclose(new.metrics, old.metrics, rtol=0, atol=FLOAT64_KERNELS)
    assert new.patches == old.patches
    for k, v in old.samples.items():
        np.testing.assert_array_equal(new.samples[k], v)


def test_the_staged_bcnet_fit_trains_what_release_0_1_0_trained(monkeypatch):
    # Release 0.1.0 trained the head by the Gaussian NLL, which the Student-t replaced
    # (xharmonise.losses.student_nll): with that loss, the staged fit trains what it did.
    monkeypatch.setattr(training, "loss_function", partial(losses.loss_function, dof=math.inf))
    pair = _v1_pair()
    old = xharmonise.load(DATA / "model-v1-bcnet.safetensors")
    new = xharmonise.fit(
        pair.src,
        pair.ref,
        method="bcnet",
        variance=True,
        patch_size=4,
        iterations=4,
        batch_size=4,
        progress=False,
    )
    assert new.patches == old.patches
    np.testing.assert_allclose(new.linear, old.linear, rtol=0, atol=FLOAT64_KERNELS)
    # Same data, same seeds, same steps; float sums may differ with the thread count
    # (lazy vs in-memory fits differ by up to 9e-6 on weights with one thread).
    old_state, new_state = old.net.state_dict(), new.net.state_dict()
    assert old_state.keys() == new_state.keys()
    for k in old_state:
        np.testing.assert_allclose(new_state[k].numpy(), old_state[k].numpy(), atol=1e-4)
    np.testing.assert_allclose(new.metrics.values, old.metrics.values, rtol=1e-3)
