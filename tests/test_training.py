"""Tests for the training loop: determinism, checkpointing, early stopping, learning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional

from xharmonise.losses import relative_error
from xharmonise.models import build_model, filter_shift
from xharmonise.psf import kernel_margin
from xharmonise.training import (
    CPU_BUDGETS,
    PAPER_RECIPE,
    PatchSet,
    TrainResult,
    _improves,
    default_budget,
    resolve_device,
    train,
)


def _smooth_patches(rng: np.random.Generator, n: int, c: int, size: int) -> np.ndarray:
    # Band-correlated, spatially smooth reflectances in about [0.05, 0.6].
    noise = torch.from_numpy(rng.standard_normal((n, c, size + 4, size + 4)).astype(np.float32))
    smooth = functional.avg_pool2d(noise, 5, stride=1)
    common = smooth.mean(dim=1, keepdim=True)
    x = 0.3 + 0.25 * (0.6 * common + 0.4 * smooth) / float(smooth.std())
    return x.clamp(0.05, 0.6).numpy()


def _quadratic_sets(n_train: int = 64, n_val: int = 32, c: int = 3, size: int = 8):
    rng = np.random.default_rng(0)
    x = _smooth_patches(rng, n_train + n_val, c, size)
    y = (x + 0.3 * x**2).astype(np.float32)
    return PatchSet(x[:n_train], y[:n_train]), PatchSet(x[n_train:], y[n_train:])


def _small_calibnet(seed: int = 0, **kw):
    return build_model("calibnet", 3, hidden=32, seed=seed, **kw)


FAST = {"iterations": 60, "eval_every": 20, "pixels_per_step": 256, "progress": False}


def _val_loss(net: torch.nn.Module, val: PatchSet) -> float:
    with torch.no_grad():
        pred, _ = net.eval()(torch.from_numpy(val.src))
    return float(relative_error(pred, torch.from_numpy(val.ref)))


def test_same_seed_gives_identical_history_and_weights() -> None:
    tr, va = _quadratic_sets()
    runs = []
    for seed in (0, 0, 1):
        net = _small_calibnet()
        res = train(net, tr, va, seed=seed, **FAST)
        runs.append((res, net.state_dict()))
    (r0, w0), (r1, w1), (r2, _) = runs
    assert r0.history == r1.history
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert r0.history["val_loss"] != r2.history["val_loss"]


def test_loss_decreases_and_best_checkpoint_is_kept() -> None:
    tr, va = _quadratic_sets()
    net = _small_calibnet()
    initial = _val_loss(net, va)
    res = train(net, tr, va, patience=0, reference_loss=0.123, **FAST)
    h = res.history
    assert isinstance(res, TrainResult)
    assert h["reference_loss"] == 0.123
    n = len(h["iteration"])
    assert n == 3 and all(len(h[k]) == n for k in ("train_loss", "val_loss", "lr"))
    assert h["iteration"] == [20, 40, 60] and res.iterations_run == 60
    assert h["val_loss"][-1] < 0.5 * initial
    assert h["train_loss"][-1] < h["train_loss"][0]
    best = int(np.argmin(h["val_loss"]))
    assert res.best_iteration == h["iteration"][best]
    assert res.best_val_loss == min(h["val_loss"])
    assert not net.training
    assert _val_loss(net, va) == pytest.approx(res.best_val_loss, rel=1e-5)


def test_best_checkpoint_restored_when_training_diverges() -> None:
    # A huge learning rate makes later evaluations worse: the kept weights must still be
    # those of the best evaluation, not the last ones.
    tr, va = _quadratic_sets()
    net = _small_calibnet()
    res = train(net, tr, va, patience=0, lr=1.0, **{**FAST, "eval_every": 5})
    h = res.history
    assert res.best_val_loss == min(h["val_loss"])
    assert _val_loss(net, va) == pytest.approx(res.best_val_loss, rel=1e-5)


def test_early_stopping_on_a_plateau() -> None:
    tr, va = _quadratic_sets()
    net = _small_calibnet()
    # A vanishing learning rate leaves the validation loss flat once BatchNorm's running
    # statistics have settled, so training must stop long before its budget.
    res = train(
        net,
        tr,
        va,
        iterations=5000,
        eval_every=50,
        patience=2,
        lr=1e-12,
        pixels_per_step=64,
        progress=False,
    )
    assert res.stopped_early
    assert res.iterations_run < 5000
    assert res.iterations_run == res.history["iteration"][-1]
    assert len(res.history["iteration"]) <= 8


def test_progress_false_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    tr, va = _quadratic_sets()
    train(_small_calibnet(), tr, va, **FAST)
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    train(_small_calibnet(), tr, va, **{**FAST, "progress": True})
    assert "train calibnet" in capsys.readouterr().err


def test_calibnet_learns_nonlinear_mapping_better_than_linear_fit() -> None:
    tr, va = _quadratic_sets(n_train=128, n_val=64)
    x = tr.src.transpose(0, 2, 3, 1).reshape(-1, 3).astype(np.float64)
    y = tr.ref.transpose(0, 2, 3, 1).reshape(-1, 3).astype(np.float64)
    coef = np.linalg.lstsq(np.c_[x, np.ones(len(x))], y, rcond=None)[0]
    xv = va.src.transpose(0, 2, 3, 1).reshape(-1, 3).astype(np.float64)
    yv = va.ref.transpose(0, 2, 3, 1).reshape(-1, 3).astype(np.float64)
    linear = float(np.mean(np.abs(yv - np.c_[xv, np.ones(len(xv))] @ coef) / (yv + 1e-3)))
    net = build_model("calibnet", 3, hidden=64, seed=0)
    res = train(
        net, tr, va, iterations=600, eval_every=100, pixels_per_step=1024, lr=2e-3, progress=False
    )
    assert res.best_val_loss < 0.5 * linear


def test_variance_head_learns_the_noise_level() -> None:
    rng = np.random.default_rng(3)
    x = _smooth_patches(rng, 96, 3, 8)
    sigma = 0.02
    y = (x + sigma * rng.standard_normal(x.shape)).astype(np.float32)
    tr, va = PatchSet(x[:64], y[:64]), PatchSet(x[64:], y[64:])
    net = build_model("calibnet", 3, hidden=32, variance=True, seed=0)
    train(
        net, tr, va, iterations=600, eval_every=100, pixels_per_step=1024, lr=3e-3, progress=False
    )
    with torch.no_grad():
        _, var = net(torch.from_numpy(va.src))
    assert float(var.mean()) == pytest.approx(sigma**2, rel=0.5)


@pytest.mark.parametrize("method", ["convcalibnet", "bcnet"])
def test_patch_models_train(method: str) -> None:
    rng = np.random.default_rng(0)
    factor, sigmas = 3, [1.0, 1.2, 0.8]
    margin = kernel_margin(max(sigmas), factor)
    net = build_model(method, 3, sigmas=sigmas, factor=factor, margin=margin, hidden=16, seed=0)
    pad = factor * 8 + 2 * margin if method == "bcnet" else 8
    src = _smooth_patches(rng, 24, 3, pad)
    ref_src = src[:, :, margin:-margin:factor, margin:-margin:factor] if method == "bcnet" else src
    ref = np.ascontiguousarray(1.2 * ref_src, dtype=np.float32)
    tr, va = PatchSet(src[:16], ref[:16]), PatchSet(src[16:], ref[16:])
    net_before = _patch_val_loss(net, va)
    res = train(net, tr, va, iterations=40, eval_every=20, batch_size=4, lr=3e-3, progress=False)
    assert res.config.batch_size == 4
    assert res.best_val_loss < net_before


def _patch_val_loss(net: torch.nn.Module, val: PatchSet) -> float:
    with torch.no_grad():
        pred, _ = net.eval()(torch.from_numpy(val.src))
    net.train()
    return float(relative_error(pred, torch.from_numpy(val.ref)))


def test_bcnet_filter_moves_towards_a_known_shift() -> None:
    # The reference is the source blurred by the same Gaussian but sampled 1.5 source
    # pixels further down: the learned filter's centroid must move downwards.
    factor, sigma, shift = 5, 1.5, 1.5
    margin = kernel_margin(sigma, factor, extra=2)
    size = factor + 2 * margin
    off = np.arange(size) - (size - 1) / 2.0
    gy, gx = np.exp(-0.5 * ((off - shift) / sigma) ** 2), np.exp(-0.5 * (off / sigma) ** 2)
    true_kernel = torch.from_numpy(np.outer(gy / gy.sum(), gx / gx.sum()).astype(np.float32))
    rng = np.random.default_rng(0)
    n, side = 48, 8 * factor + 2 * margin
    src = torch.from_numpy(rng.uniform(0.05, 0.6, (n, 1, side, side)).astype(np.float32))
    src = functional.avg_pool2d(src, 3, stride=1, padding=1, count_include_pad=False)
    ref = functional.conv2d(src, true_kernel[None, None], stride=factor)
    tr = PatchSet(src[:32].numpy(), ref[:32].numpy())
    va = PatchSet(src[32:].numpy(), ref[32:].numpy())
    net = build_model("bcnet", 1, sigmas=[sigma], factor=factor, margin=margin, hidden=16, seed=0)
    res = train(
        net,
        tr,
        va,
        iterations=150,
        eval_every=50,
        batch_size=8,
        lr=1e-2,
        patience=0,
        progress=False,
    )
    dy, dx = filter_shift(net.filters())[0]
    assert 0.5 < dy < 2.5
    assert abs(dx) < 0.3
    np.testing.assert_allclose(net.filters().sum(axis=(1, 2)), 1.0, atol=1e-6)
    assert res.best_val_loss < res.history["val_loss"][0] or res.best_iteration == 50


def test_inputs_are_not_modified_and_read_only_arrays_are_accepted() -> None:
    tr, va = _quadratic_sets()
    copies = [a.copy() for a in (tr.src, tr.ref, va.src, va.ref)]
    for a in (tr.src, tr.ref):
        a.flags.writeable = False
    train(_small_calibnet(), tr, va, **FAST)
    for a, b in zip((tr.src, tr.ref, va.src, va.ref), copies, strict=True):
        np.testing.assert_array_equal(a, b)


def test_bad_inputs_are_rejected() -> None:
    tr, va = _quadratic_sets()
    bad = tr.src.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        train(_small_calibnet(), PatchSet(bad, tr.ref), va, **FAST)
    with pytest.raises(ValueError, match="bands"):
        train(build_model("calibnet", 4, hidden=8), tr, va, **FAST)
    with pytest.raises(ValueError):
        PatchSet(tr.src[:3], tr.ref[:4])


def test_devices_and_budgets() -> None:
    tr, va = _quadratic_sets()
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        assert train(_small_calibnet(), tr, va, device="auto", **FAST).device == "cpu"
        with pytest.raises(RuntimeError, match="CUDA"):
            resolve_device("cuda")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert default_budget("cpu", "calibnet") is CPU_BUDGETS["calibnet"]
    assert default_budget("cuda", "bcnet") is PAPER_RECIPE
    assert PAPER_RECIPE.batch_size == 100 and PAPER_RECIPE.lr == 2e-4
    res = train(_small_calibnet(), tr, va, iterations=1, batch_size=2, progress=False)
    # An explicit patch batch means whole patches' worth of pixels for CalibNet.
    assert res.config.pixels_per_step == 2 * 8 * 8


@pytest.mark.parametrize("method", ["calibnet", "convcalibnet"])
def test_masked_reference_pixels_are_left_out_of_training(method: str) -> None:
    # Half the targets are masked (NaN): training ignores them and learns from the rest
    # about as well as from every target.
    tr, va = _quadratic_sets()
    cloud = np.random.default_rng(1).random(tr.ref.shape[:1] + tr.ref.shape[2:]) < 0.5
    cloud = np.broadcast_to(cloud[:, None], tr.ref.shape)
    masked = PatchSet(tr.src, np.where(cloud, np.float32(np.nan), tr.ref))
    masked_val = PatchSet(va.src, np.where(cloud[: len(va)], np.float32(np.nan), va.ref))
    options = dict(FAST, iterations=200, batch_size=8) if method == "convcalibnet" else FAST
    losses = {}
    for name, sets in (("clean", (tr, va)), ("masked", (masked, masked_val))):
        net = build_model(method, 3, hidden=32, seed=0)
        before = _val_loss(net, va)
        res = train(net, *sets, **options)
        assert np.isfinite(res.best_val_loss) and np.isfinite(res.history["train_loss"]).all()
        losses[name] = _val_loss(net, va)
        assert losses[name] < 0.7 * before
    assert losses["masked"] < 1.5 * losses["clean"]


def test_reference_masked_everywhere_or_infinite_is_refused() -> None:
    tr, va = _quadratic_sets()
    with pytest.raises(ValueError, match="masked"):
        train(_small_calibnet(), PatchSet(tr.src, np.full_like(tr.ref, np.nan)), va, **FAST)
    bad = tr.ref.copy()
    bad[0, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="infinite"):
        train(_small_calibnet(), PatchSet(tr.src, bad), va, **FAST)


def test_a_plateau_of_a_negative_loss_counts_as_a_plateau():
    # A trained head's NLL is negative: a loss no better than the plateau's, or
    # slightly worse, must not reset the patience, as it does for a positive loss.
    for ref in (-5.0, 5.0):
        assert not _improves(ref, ref, 1e-3)
        assert not _improves(ref + 1e-4, ref, 1e-3)
        assert _improves(ref - 0.01 * abs(ref), ref, 1e-3)
    assert _improves(-5.0, math.inf, 1e-3)
