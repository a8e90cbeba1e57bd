"""The CUDA code paths: device choice, training on the GPU, the pixel kernel's CUDA path.

Most tests need a CUDA GPU and skip without one (CI has none; docs/gpu.md says how a
session with the borrowed GPU runs them). The precision switch and the GPU benchmark's
tiny CPU run are checked everywhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import torch

import xharmonise
from xharmonise.inference import PixelKernel, map_pixels
from xharmonise.models import build_model
from xharmonise.models import method as method_spec
from xharmonise.models.budget import PAPER_RECIPE
from xharmonise.simulate import simulate_pair
from xharmonise.training import (
    PatchSet,
    _device_epoch_indices,
    _set_cuda_float32,
    allow_tf32,
    default_budget,
    resolve_device,
    train,
)

ROOT = Path(__file__).resolve().parents[1]
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(
    not HAS_CUDA,
    reason="needs a CUDA GPU (none here; docs/gpu.md runs these on the borrowed one)",
)
# CPU / CUDA agreement, as benchmarks/gpu.py states it: predictions within half the 1e-4
# reflectance quantum of Pleiades DN (float32 through three layers of <= 320 terms errs
# by ~1e-6); variances relatively within 1e-4, since a variance's relative error is at
# most the absolute error of the head output it is computed from.
PRED_ATOL = 5e-5
VAR_RTOL = 1e-4


def _trained_like_net(bands: int = 4, variance: bool = True, seed: int = 0):
    """A CalibNet whose BatchNorm statistics are not the identity, so folding shows."""
    net = build_model("calibnet", bands, variance=variance, seed=seed)
    with torch.no_grad():
        net.norm.running_mean.uniform_(0.05, 0.3)
        net.norm.running_var.uniform_(0.005, 0.05)
    return net.eval()


def _pixels(n: int, bands: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 0.6, (n, bands)).astype(np.float32)


def _patches(n: int, bands: int, side: int, ref_side: int, seed: int) -> PatchSet:
    rng = np.random.default_rng(seed)
    src = rng.uniform(0.05, 0.5, (n, bands, side, side)).astype(np.float32)
    ref = rng.uniform(0.05, 0.5, (n, bands, ref_side, ref_side)).astype(np.float32)
    return PatchSet(src, ref)


def test_training_precision_is_float32_unless_tf32_is_allowed():
    # Only backend flags change here: no GPU is needed to check that they are set for a
    # CUDA fit and restored after it.
    before = _precision_flags()
    restore = _set_cuda_float32(torch.device("cuda"), tf32=False)
    try:
        assert set(_precision_flags().values()) <= {"ieee", False}
    finally:
        restore()
    assert _precision_flags() == before
    restore = _set_cuda_float32(torch.device("cuda"), tf32=True)
    try:
        assert set(_precision_flags().values()) <= {"tf32", True}
    finally:
        restore()
    assert _precision_flags() == before
    # The CPU leaves everything alone.
    _set_cuda_float32(torch.device("cpu"), tf32=True)()
    assert _precision_flags() == before


def test_allow_tf32_is_scoped():
    from xharmonise.training import _TF32

    assert _TF32.get() is False
    with allow_tf32():
        assert _TF32.get() is True
        with allow_tf32(False):
            assert _TF32.get() is False
        assert _TF32.get() is True
    assert _TF32.get() is False


def _precision_flags() -> dict[str, object]:
    matmul = torch.backends.cuda.matmul
    conv = getattr(torch.backends.cudnn, "conv", None)
    if hasattr(matmul, "fp32_precision") and conv is not None:
        return {"matmul": matmul.fp32_precision, "conv": conv.fp32_precision}
    return {"matmul": matmul.allow_tf32, "conv": torch.backends.cudnn.allow_tf32}


@needs_cuda
def test_auto_picks_cuda_and_the_paper_recipe():
    assert resolve_device("auto").type == "cuda"
    assert default_budget("auto", "bcnet") == PAPER_RECIPE
    assert PixelKernel(_trained_like_net()).device.type == "cuda"


@needs_cuda
@pytest.mark.parametrize("variance", [False, True])
def test_kernel_on_cuda_agrees_with_the_cpu(variance):
    net = _trained_like_net(variance=variance)
    gpu = PixelKernel(net, device="cuda")
    # Two full GPU tiles and a remainder.
    x = _pixels(2 * gpu.tile + 1001)
    pred_c, var_c = PixelKernel(net, device="cpu")(x)
    pred_g, var_g = gpu(x)
    np.testing.assert_allclose(pred_g, pred_c, rtol=0, atol=PRED_ATOL)
    if variance:
        assert var_g is not None and var_c is not None
        np.testing.assert_allclose(var_g, var_c, rtol=VAR_RTOL, atol=0)
        assert (var_g > 0).all()
    else:
        assert var_g is None


@needs_cuda
def test_kernel_forward_on_device_equals_the_host_call():
    net = _trained_like_net()
    kernel = PixelKernel(net, device="cuda")
    x = _pixels(5000)
    pred, var = kernel(x)
    z = kernel.forward(torch.from_numpy(x).cuda()).cpu().numpy()
    np.testing.assert_allclose(z[:, :4], pred, rtol=0, atol=PRED_ATOL)
    np.testing.assert_allclose(z[:, 4:], var, rtol=VAR_RTOL, atol=0)


@needs_cuda
def test_kernel_threads_each_get_their_own_stream_and_the_same_answer():
    net = _trained_like_net()
    kernel = PixelKernel(net, device="cuda", tile=4096)
    x = _pixels(50_000)
    expected, _ = kernel(x)
    results: dict[int, np.ndarray] = {}
    streams: dict[int, int] = {}

    def work(i: int) -> None:
        results[i] = kernel(x)[0].copy()
        streams[i] = kernel._stream().cuda_stream

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(streams.values())) == 4
    for r in results.values():
        np.testing.assert_allclose(r, expected, rtol=0, atol=PRED_ATOL)


@needs_cuda
def test_lazy_predict_on_cuda_matches_the_cpu_kernel():
    pair = simulate_pair((200, 200), seed=0)
    model = xharmonise.fit(
        pair.src, pair.ref, method="calibnet", variance=True, iterations=5, patch_size=8,
        device="cpu", progress=False,
    )  # fmt: skip
    net = method_spec(model.method).inference_network(model.net)
    block = np.random.default_rng(1).uniform(0, 0.6, (4, 300, 300)).astype(np.float32)
    block[:, :5, :7] = np.nan  # no-data stays NaN on the GPU too
    with dask.config.set(scheduler="threads", num_workers=3):
        out = map_pixels(da.from_array(block, chunks=(4, 100, 150)), model).compute()
    valid = np.isfinite(block).all(axis=0)
    pred, var = PixelKernel(net, device="cpu")(block[:, valid].T.copy())
    np.testing.assert_allclose(out[:4, valid].T, pred, rtol=0, atol=PRED_ATOL)
    np.testing.assert_allclose(out[4:, valid].T, var, rtol=VAR_RTOL, atol=0)
    assert np.isnan(out[:, ~valid]).all()


@needs_cuda
@pytest.mark.parametrize("method", ["calibnet", "convcalibnet", "bcnet"])
def test_training_on_cuda_gives_finite_losses(method):
    factor, margin, h = 5, 6, 8
    side = factor * h + 2 * margin if method == "bcnet" else h
    data = _patches(24, 4, side, h, seed=0)
    val = _patches(4, 4, side, h, seed=1)
    kw = {"factor": factor, "sigmas": [2.0] * 4, "margin": margin} if method == "bcnet" else {}
    net = build_model(method, 4, variance=True, seed=0, **kw)
    res = train(net, data, val, iterations=30, eval_every=10, batch_size=6, progress=False)
    assert res.device.startswith("cuda")
    assert res.history["iteration"] == [10, 20, 30]
    assert np.isfinite(res.history["train_loss"]).all()
    assert np.isfinite(res.history["val_loss"]).all()
    assert next(net.parameters()).device.type == "cuda"


@needs_cuda
def test_a_training_step_never_waits_for_the_gpu():
    # With CUDA's sync debug mode each synchronising call warns: the count must not grow
    # with the steps (only the set-up and each evaluation read anything back).
    data, val = _patches(40, 4, 8, 8, seed=0), _patches(4, 4, 8, 8, seed=1)

    def syncs(iterations: int) -> int:
        net = build_model("calibnet", 4, seed=0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train(net, data, val, iterations=iterations, eval_every=iterations,
                      pixels_per_step=512, device="cuda", progress=False)  # fmt: skip
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message).lower() for w in caught)

    assert syncs(60) == syncs(20)


@needs_cuda
def test_device_batches_are_seeded_shuffled_epochs():
    def draw(seed: int) -> list[np.ndarray]:
        gen = torch.Generator(device="cuda")
        gen.manual_seed(seed)
        it = _device_epoch_indices(10, 4, gen, torch.device("cuda"))
        return [next(it).cpu().numpy() for _ in range(5)]

    a, b = draw(3), draw(3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    flat = np.concatenate(a)  # 20 indices: two whole epochs of 10
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))


def test_gpu_benchmark_runs_tiny_on_the_cpu(tmp_path):
    # The script the borrowed GPU runs, end to end on the CPU with its smallest settings
    # (two methods, a small scene, no optional section): every section's key is written.
    out = tmp_path / "gpu.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "gpu.py"),
        "--device=cpu",
        "--tiny",
        "--methods=linear,calibnet",
        "--scene-pixels=1e5",
        "--deadline=0",
        f"--out={out}",
    ]
    subprocess.run(cmd, check=True, cwd=tmp_path, capture_output=True, timeout=300)
    doc = json.loads(out.read_text())
    assert doc["tiny"] is True and doc["machine"]["device"] == "cpu"
    for key in (
        "pair",
        "fits",
        "cpu_vs_device",
        "kernel_vs_matmul",
        "predict_to_zarr",
        "tile_sweep",
        "threads",
        "tf32",
        "targets",
    ):
        assert key in doc, key
    assert set(doc["fits"]) == {"linear", "calibnet"}
    assert doc["cpu_vs_device"]["models"]["calibnet"]["identical"]
    assert doc["predict_to_zarr"]["pixels"] >= 1e5 and doc["predict_to_zarr"]["finite_readback"]
    assert "skipped" in doc["tile_sweep"] and "skipped" in doc["tf32"]
