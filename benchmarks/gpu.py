"""The CUDA path on one GPU: paper-recipe fits, CPU / CUDA agreement, predict → Zarr rate.

Meant for the borrowed GPU machine, run by ``benchmarks/gpu.sh`` within 8 minutes, set-up
included (docs/gpu.md says how). Sections, in the order they run; the JSON is rewritten
after each one, so a run cut short keeps what it measured:

1. ``machine``: the device's name, PyTorch / CUDA versions, the float32 precision settings.
2. ``fits``: on one simulated pair (``--size`` x ``--size`` source pixels at TOA,
   mis-registered by (3, -2) m as in ``paper_table.py``'s ``toa`` scenario), ``linear``
   and the three neural methods with the variance head, trained on ``--device`` with the
   paper's recipe (``PAPER_RECIPE``: 5000 iterations of 100 patches, early stopping on a
   20-evaluation plateau); fit time (``stages.run`` on the in-memory pair) and training
   time, steps run, test metrics (mean over bands, per stage).
3. ``cpu_vs_device``: each neural model's prediction of one source tile on the CPU and on
   the device, through the code ``predict`` runs (the pixel kernel, or ConvCalibNet's
   network), and the largest differences; the tolerance is stated in the JSON.
4. ``kernel_vs_matmul``: the pixel kernel's rate on device-resident pixels
   (``PixelKernel.forward``) and from host memory (``PixelKernel.__call__``), as GFLOP/s
   of its three matmuls, against a preallocated P x 320 by 320 x 320 matmul on the same
   device, at the same float32 precision.
5. ``predict_to_zarr``: ``predict`` → ``to_zarr`` of a lazy scene of at least
   ``--scene-pixels`` pixels (the simulated source tile repeated by Dask, as in
   ``predict_memory.py``) with the CalibNet model, threaded scheduler: Mpx/s and the
   store's compression ratio.
6. Only while time is left (``--deadline`` seconds from the start): ``tile_sweep`` (the
   kernel from host memory at several tile sizes), ``threads`` (predict of the scene
   reduced to a sum, no store, with 1, 4 and all Dask threads: one CUDA stream each) and
   ``tf32`` (CalibNet and BCNet refitted with TF32 allowed, their test RMSE against the
   float32 fits').

``--device cpu --tiny`` runs every section in about a minute on a laptop CPU, with tiny
sizes and budgets, and writes ``results/gpu_cpu_tiny.json``: it proves the script, not
the GPU; its figures say nothing about one.

Usage: python benchmarks/gpu.py [--device cuda] [--tiny] [--out PATH]
Writes benchmarks/results/gpu.json (``--tiny``: gpu_<device>_tiny.json).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import torch
import xarray as xr

import xharmonise
from xharmonise import stages
from xharmonise.harmoniser import Harmoniser
from xharmonise.inference import PixelKernel
from xharmonise.models import method as method_spec
from xharmonise.models.budget import PAPER_RECIPE, TrainingConfig
from xharmonise.simulate import simulate_pair
from xharmonise.training import allow_tf32

RESULTS = Path(__file__).resolve().parent / "results"
SHIFT = (3.0, -2.0)  # metres east, north, as benchmarks/paper_table.py
METHODS = ("linear", "calibnet", "convcalibnet", "bcnet")
# The paper's training times on a T4 (Michel & Inglada 2021), for comparison.
PAPER_T4_SECONDS = {"calibnet": 8 * 60.0, "bcnet": 2 * 60.0 + 36.0}
# CPU / device agreement. Reflectance predictions: 5e-5, half the 1e-4 quantum of
# Pleiades DN products, so a difference below it changes no value stored as DN by more
# than one step; float32's own error through three layers of at most 320 terms is ~1e-6.
# Variances: relative 1e-4, since sigma² = ELU(z) + 1 + eps has a relative error no
# larger than the absolute error of the head's output z (as small as the prediction's).
PRED_ATOL = 5e-5
VAR_RTOL = 1e-4


@dataclass(frozen=True)
class Sizes:
    """Everything --tiny shrinks."""

    size: int  # source side of the simulated pair
    patch_size: int
    budget: TrainingConfig
    tile: int  # side of the cpu_vs_device tile
    kernel_pixels: int  # P of kernel_vs_matmul
    scene_pixels: float
    chunk: int  # Dask chunk side of the lazy scene (= the simulated tile's side)
    sweep_tiles: tuple[int, ...]
    repeat: int


FULL = Sizes(
    size=2000,
    patch_size=32,
    budget=PAPER_RECIPE,
    tile=1024,
    kernel_pixels=1 << 22,
    scene_pixels=1e8,
    chunk=2000,
    sweep_tiles=(1 << 16, 1 << 18, 1 << 20, 1 << 22),
    repeat=5,
)
TINY = Sizes(
    size=400,
    patch_size=16,
    budget=replace(PAPER_RECIPE, iterations=12, batch_size=4, eval_every=6),
    tile=128,
    kernel_pixels=1 << 14,
    scene_pixels=1e6,
    chunk=400,
    sweep_tiles=(1 << 11, 1 << 13),
    repeat=2,
)


class Run:
    """The result document, rewritten to ``out`` (if any) after each section."""

    def __init__(self, out: Path | None, deadline: float, prefix: str = "") -> None:
        self.out, self.deadline, self.prefix = out, deadline, prefix
        self.start = time.perf_counter()
        self.doc: dict[str, Any] = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def log(self, msg: str) -> None:
        print(f"[{self.elapsed():6.1f} s] {self.prefix}{msg}", flush=True)

    def section(self, name: str) -> Run:
        """A document of its own, not saved, on the same clock, its log lines tagged."""
        sub = Run(None, math.inf, prefix=f"{name}: ")
        sub.start = self.start
        return sub

    def save(self, key: str, value: Any) -> None:
        self.doc[key] = value
        self.doc["wall_seconds"] = round(self.elapsed(), 2)
        if self.out is None:
            return
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.doc, indent=2, default=_plain) + "\n")
        tmp.replace(self.out)

    def time_left(self) -> float:
        return self.deadline - self.elapsed()


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj)} is not JSON")


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _best(fn: Callable[[], Any], repeat: int, dev: torch.device) -> float:
    """Best wall time of ``repeat`` calls after one warm-up, the device drained each time."""
    fn()
    _sync(dev)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return min(times)


def _precision() -> dict[str, Any]:
    out: dict[str, Any] = {"float32_matmul_precision": torch.get_float32_matmul_precision()}
    matmul = torch.backends.cuda.matmul
    conv = getattr(torch.backends.cudnn, "conv", None)
    if hasattr(matmul, "fp32_precision") and conv is not None:
        out["cuda_matmul_fp32_precision"] = matmul.fp32_precision
        out["cudnn_conv_fp32_precision"] = conv.fp32_precision
    else:
        out["cuda_matmul_allow_tf32"] = matmul.allow_tf32
        out["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    return out


def _warm_up(dev: torch.device) -> None:
    """Start what a first fit would otherwise be charged for: the CUDA context, cuBLAS and
    cuDNN, the CPU's thread pools, and the optimiser's first step (which imports
    ``torch._dynamo``: seconds)."""
    x = torch.rand(64, 4, 16, 16, device=dev)
    w = torch.rand(320, 4 * 16 * 16, device=dev, requires_grad=True)
    k = torch.rand(4, 4, 3, 3, device=dev, requires_grad=True)
    optimiser = torch.optim.Adam([w, k], lr=1e-4)
    y = torch.nn.functional.conv2d(x, k, padding=1)
    (y.flatten(1) @ w.T).sum().backward()
    optimiser.step()
    _sync(dev)


def machine(dev: torch.device) -> dict[str, Any]:
    """The device and the software that ran on it."""
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        name = torch.cuda.get_device_name(dev)
        extra = {
            "multiprocessors": props.multi_processor_count,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
        }
    else:
        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        extra = {}
    return {
        "device": str(dev),
        "name": name,
        **extra,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if dev.type == "cuda" else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "xarray": xr.__version__,
        "dask": dask.__version__,
        "precision_during_training": (
            "IEEE float32 (xharmonise.training's default on CUDA)"
            if dev.type == "cuda"
            else "float32 (the CPU has no TF32)"
        ),
        "precision_outside_training": _precision(),
    }


def simulated(size: int) -> Any:
    """The TOA pair, simulated in parallel by Dask and then held in memory."""
    pair = simulate_pair((size, size), seed=0, shift=SHIFT, toa=True, chunks=max(size // 4, 100))
    with dask.config.set(scheduler="threads"):
        src, ref = dask.compute(pair.src, pair.ref)
    return src, ref


def _metrics(model: Harmoniser) -> dict[str, Any]:
    m = model.metrics
    return {
        str(s): {str(k): float(m.sel(metric=k, stage=s).mean()) for k in m["metric"].values}
        for s in m["stage"].values
    }


def fit_all(
    src: xr.DataArray, ref: xr.DataArray, dev: torch.device, sz: Sizes, run: Run, methods: list
) -> tuple[dict[str, Any], dict[str, Harmoniser]]:
    """Section 2: the paper's recipe for every method, with the variance head."""
    paired = stages.reflectance_pair(src, ref)
    fits: dict[str, Any] = {}
    models: dict[str, Harmoniser] = {}
    for name in methods:
        spec = method_spec(name)
        variance = spec.offers_variance
        t0 = time.perf_counter()
        model = stages.run(
            paired,
            spec,
            mask=None,
            coregister=False,
            variance=variance,
            patch_size=sz.patch_size,
            test_fraction=0.1,
            max_patches=None,
            seed=0,
            iterations=None,
            batch_size=None,
            device=str(dev),
            progress=False,
            budget=sz.budget if spec.neural else None,
        )
        seconds = time.perf_counter() - t0
        h = model.history
        entry: dict[str, Any] = {
            "variance": variance,
            "budget": asdict(sz.budget) if spec.neural else None,
            "fit_seconds": round(seconds, 3),
            "train_seconds": round(h.get("seconds", 0.0), 3),
            "iterations_run": h.get("iterations_run", 0),
            "best_iteration": h.get("best_iteration", 0),
            "steps_per_second": (
                round(h["iterations_run"] / h["seconds"], 1) if h.get("seconds") else None
            ),
            "trained_on": h.get("device"),
            "patches": model.patches,
            "test_metrics_mean_over_bands": _metrics(model),
            "paper_t4_train_seconds": PAPER_T4_SECONDS.get(name),
        }
        fits[name] = entry
        models[name] = model
        run.log(
            f"fit {name}: {seconds:.1f} s (training {entry['train_seconds']} s, "
            f"{entry['iterations_run']} steps), test RMSE "
            f"{entry['test_metrics_mean_over_bands']['model']['rmse']:.5f}"
        )
        run.save("fits", fits)
    return fits, models


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0


def _max_rel(a: np.ndarray, b: np.ndarray) -> float:
    a64 = a.astype(np.float64)
    return float(np.max(np.abs(a64 - b) / np.abs(a64))) if a.size else 0.0


def cpu_vs_device(
    models: dict[str, Harmoniser], src: xr.DataArray, dev: torch.device, sz: Sizes
) -> dict[str, Any]:
    """Section 3: one tile predicted on the CPU and on the device by the same model."""
    tile = np.ascontiguousarray(src.values[:, : sz.tile, : sz.tile], dtype=np.float32)
    pixels = np.ascontiguousarray(tile.reshape(tile.shape[0], -1).T)
    out: dict[str, Any] = {
        "tile": f"{sz.tile}x{sz.tile}",
        "tolerance": {
            "prediction_atol": PRED_ATOL,
            "variance_rtol": VAR_RTOL,
            "why": (
                "prediction: half the 1e-4 reflectance quantum of Pleiades DN; variance: "
                "its relative error is at most the head output's absolute error"
            ),
        },
        "models": {},
    }
    for name, model in models.items():
        if model.net is None:
            continue
        spec = method_spec(model.method)
        net = spec.inference_network(model.net)
        c = model.n_bands
        if spec.halo:
            # ConvCalibNet: predict runs the network itself, on the CPU (docs/gpu.md).
            x = torch.from_numpy(tile[None])
            dnet = copy.deepcopy(net).to(dev)  # the model's own network stays on the CPU
            with torch.inference_mode():
                cpu_p, cpu_v = (t[0].numpy() for t in net(x))
                dev_p, dev_v = (t[0].cpu().numpy() for t in dnet(x.to(dev)))
            path = "network (predict runs it on the CPU)"
        else:
            k_cpu, k_dev = PixelKernel(net, device="cpu"), PixelKernel(net, device=str(dev))
            cpu_p, cpu_v = k_cpu(pixels)
            dev_p, dev_v = k_dev(pixels)
            path = f"PixelKernel (tile {k_dev.tile} on {dev.type})"
        pred_diff = _max_diff(cpu_p, dev_p)
        var_rel = _max_rel(cpu_v, dev_v) if cpu_v is not None and dev_v is not None else None
        agree = pred_diff <= PRED_ATOL and (var_rel is None or var_rel <= VAR_RTOL)
        out["models"][name] = {
            "path": path,
            "bands": c,
            "max_abs_prediction_difference": pred_diff,
            "max_rel_variance_difference": var_rel,
            "identical": bool(
                np.array_equal(cpu_p, dev_p)
                and (cpu_v is None or dev_v is None or np.array_equal(cpu_v, dev_v))
            ),
            "within_tolerance": bool(agree),
        }
    return out


def _kernel_flops(kernel: PixelKernel) -> int:
    heads = int(kernel.bh.shape[0])
    return 2 * (kernel.n_bands * kernel.hidden + kernel.hidden**2 + kernel.hidden * heads)


def kernel_vs_matmul(model: Harmoniser, dev: torch.device, sz: Sizes) -> dict[str, Any]:
    """Section 4: the kernel's matmul work rate against a plain matmul of its main shape."""
    net = method_spec(model.method).inference_network(model.net)
    kernel = PixelKernel(net, device=str(dev))
    flops = _kernel_flops(kernel)
    p, h = sz.kernel_pixels, kernel.hidden
    gen = torch.Generator().manual_seed(0)
    host = (torch.rand(p, kernel.n_bands, generator=gen) * 0.5).numpy()
    x = torch.from_numpy(host).to(dev)
    out_host = np.empty((p, int(kernel.bh.shape[0])), np.float32)
    forward_s = _best(lambda: kernel.forward(x), sz.repeat, dev)
    host_s = _best(lambda: kernel(host, out=out_host), sz.repeat, dev)
    a = torch.rand(p, h, device=dev)
    b = torch.rand(h, h, device=dev)
    c = torch.empty(p, h, device=dev)
    mm_s = _best(lambda: torch.mm(a, b, out=c), sz.repeat + 3, dev)
    mm_gflops = 2 * p * h * h / mm_s / 1e9
    fwd_gflops = p * flops / forward_s / 1e9
    host_gflops = p * flops / host_s / 1e9
    return {
        "pixels": p,
        "mflop_per_pixel": flops / 1e6,
        "kernel_tile_from_host": kernel.tile,
        "kernel_on_device_mpx_per_s": p / forward_s / 1e6,
        "kernel_on_device_gflops": fwd_gflops,
        "kernel_from_host_mpx_per_s": p / host_s / 1e6,
        "kernel_from_host_gflops": host_gflops,
        "matmul_shape": f"({p}, {h}) @ ({h}, {h}) into a preallocated output",
        "matmul_gflops": mm_gflops,
        "ratio_on_device": fwd_gflops / mm_gflops,
        "ratio_from_host": host_gflops / mm_gflops,
    }


def _scene(src: xr.DataArray, pixels: float, chunk: int) -> xr.DataArray:
    """The simulated tile repeated lazily to at least ``pixels`` pixels (no scene held)."""
    tile = src.values[:, :chunk, :chunk]
    reps = math.ceil(math.sqrt(pixels) / chunk)
    data = da.tile(da.from_array(tile, chunks=(-1, chunk, chunk)), (1, reps, reps))
    n = reps * chunk
    return xr.DataArray(
        data,
        dims=("band", "y", "x"),
        coords={
            "band": src["band"].values,
            "y": 5_000_000.0 - 2.0 * (np.arange(n) + 0.5),
            "x": 500_000.0 + 2.0 * (np.arange(n) + 0.5),
        },
    ).rio.write_crs(src.rio.crs)


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def predict_to_zarr(
    model: Harmoniser, src: xr.DataArray, sz: Sizes, tmp: Path, dev: torch.device
) -> dict[str, Any]:
    """Section 5: predict → to_zarr of a lazy scene of >= scene_pixels pixels."""
    scene = _scene(src, sz.scene_pixels, sz.chunk)
    n_px = scene.shape[1] * scene.shape[2]
    store = tmp / "scene.zarr"
    with dask.config.set(scheduler="threads"):
        t0 = time.perf_counter()
        xharmonise.to_zarr(xharmonise.predict(scene, model), store, progress=False)
        _sync(dev)
        seconds = time.perf_counter() - t0
    n_vars = 2 if model.variance else 1
    raw = n_px * model.n_bands * n_vars * 4
    stored = _du(store)
    check = xr.open_zarr(store, consolidated=True)["prediction"][:, :64, :64].values
    shutil.rmtree(store)
    return {
        "method": model.method,
        "variance": bool(model.variance),
        "pixels": n_px,
        "chunks": f"{sz.chunk}x{sz.chunk}",
        "dask_threads": dask.config.get("num_workers", None) or os.cpu_count(),
        "seconds": seconds,
        "mpx_per_s": n_px / seconds / 1e6,
        "raw_bytes": raw,
        "stored_bytes": stored,
        "compression_ratio": raw / stored,
        "finite_readback": bool(np.isfinite(check).all()),
    }


def tile_sweep(model: Harmoniser, dev: torch.device, sz: Sizes) -> dict[str, Any]:
    """Optional: the kernel from host memory at several tile sizes (one chunk's pixels)."""
    net = method_spec(model.method).inference_network(model.net)
    p = sz.chunk * sz.chunk
    host = (torch.rand(p, model.n_bands, generator=torch.Generator().manual_seed(1)) * 0.5).numpy()
    rates = {}
    for t in sz.sweep_tiles:
        kernel = PixelKernel(net, device=str(dev), tile=t)
        rates[str(t)] = p / _best(lambda k=kernel: k(host), sz.repeat, dev) / 1e6
    return {"pixels": p, "mpx_per_s_by_tile": rates}


def threads(model: Harmoniser, src: xr.DataArray, sz: Sizes, dev: torch.device) -> dict[str, Any]:
    """Optional: predict of a quarter scene reduced to a sum, by Dask thread count."""
    scene = _scene(src, sz.scene_pixels / 4, sz.chunk)
    n_px = scene.shape[1] * scene.shape[2]
    total = xharmonise.predict(scene, model)["prediction"].sum()
    rates = {}
    for n in sorted({1, min(4, os.cpu_count() or 1), os.cpu_count() or 1}):
        with dask.config.set(scheduler="threads", num_workers=n):
            t0 = time.perf_counter()
            total.compute()
            _sync(dev)
            rates[str(n)] = n_px / (time.perf_counter() - t0) / 1e6
    return {"pixels": n_px, "mpx_per_s_by_dask_threads": rates}


def tf32(
    src: xr.DataArray,
    ref: xr.DataArray,
    dev: torch.device,
    sz: Sizes,
    fp32: dict[str, Any],
    run: Run,
) -> dict[str, Any]:
    """Optional: CalibNet and BCNet refitted with TF32 allowed, against the float32 fits."""
    out: dict[str, Any] = {
        "note": (
            "one fit each way: the difference also holds the run-to-run noise of GPU "
            "training (non-deterministic reductions), which a decision must measure too"
        )
    }
    with allow_tf32():
        fits, _ = fit_all(src, ref, dev, sz, run.section("tf32"), ["calibnet", "bcnet"])
    for name, entry in fits.items():
        a = fp32[name]["test_metrics_mean_over_bands"]["model"]["rmse"]
        b = entry["test_metrics_mean_over_bands"]["model"]["rmse"]
        out[name] = {
            "train_seconds_fp32": fp32[name]["train_seconds"],
            "train_seconds_tf32": entry["train_seconds"],
            "test_rmse_fp32": a,
            "test_rmse_tf32": b,
            "rmse_relative_difference": (b - a) / a,
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes and budgets")
    parser.add_argument("--out", type=Path, help="default results/gpu.json")
    parser.add_argument(
        "--deadline",
        type=float,
        help="seconds from the start after which optional sections are skipped "
        "(default 330: gpu.sh's set-up and the required sections fit in 8 minutes)",
    )
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    parser.add_argument("--scene-pixels", type=float, help="predict_to_zarr's scene size")
    args = parser.parse_args(argv)

    sz = TINY if args.tiny else FULL
    if args.scene_pixels:
        sz = replace(sz, scene_pixels=args.scene_pixels)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("CUDA is not available here: run with --device cpu --tiny")
    tag = "gpu" if not args.tiny else f"gpu_{dev.type}_tiny"
    out = args.out or RESULTS / f"{tag}.json"
    deadline = args.deadline if args.deadline is not None else (300.0 if args.tiny else 330.0)
    run = Run(out, deadline)
    methods = [m for m in args.methods.split(",") if m]

    run.save("tiny", bool(args.tiny))
    run.save(
        "about",
        "GPU benchmark (benchmarks/gpu.py)"
        + (": tiny sizes and budgets, proves the script only" if args.tiny else ""),
    )
    _warm_up(dev)
    run.save("machine", machine(dev))
    run.log(f"device {run.doc['machine']['name']}")

    t0 = time.perf_counter()
    src, ref = simulated(sz.size)
    run.save(
        "pair",
        {
            "size": sz.size,
            "shift_m": SHIFT,
            "toa": True,
            "seconds": round(time.perf_counter() - t0, 2),
        },
    )
    run.log(f"simulated {sz.size} x {sz.size} pair")

    fits, models = fit_all(src, ref, dev, sz, run, methods)
    run.save("cpu_vs_device", cpu_vs_device(models, src, dev, sz))
    run.log(f"cpu vs {dev.type}: {json.dumps(run.doc['cpu_vs_device']['models'])}")

    pixel_model = next(
        (models[m] for m in ("calibnet", "bcnet") if m in models and models[m].net is not None),
        None,
    )
    skipped = {"skipped": "no CalibNet or BCNet model fitted (--methods)"}
    if pixel_model is None:
        for key in ("kernel_vs_matmul", "predict_to_zarr", "tile_sweep", "threads"):
            run.save(key, skipped)
    else:
        run.save("kernel_vs_matmul", kernel_vs_matmul(pixel_model, dev, sz))
        k = run.doc["kernel_vs_matmul"]
        run.log(
            f"kernel {k['kernel_on_device_gflops']:.0f} GFLOP/s on device, "
            f"{k['kernel_from_host_gflops']:.0f} from host; matmul {k['matmul_gflops']:.0f}"
        )
        with tempfile.TemporaryDirectory() as tmp:
            run.save("predict_to_zarr", predict_to_zarr(pixel_model, src, sz, Path(tmp), dev))
        run.log(f"predict -> zarr {run.doc['predict_to_zarr']['mpx_per_s']:.1f} Mpx/s")

        for key, fn, cost in (
            ("tile_sweep", lambda: tile_sweep(pixel_model, dev, sz), 15.0),
            ("threads", lambda: threads(pixel_model, src, sz, dev), 60.0),
        ):
            if run.time_left() > cost:
                run.save(key, fn())
                run.log(f"{key}: {json.dumps(run.doc[key])}")
            else:
                run.save(key, {"skipped": f"under {cost:.0f} s left before --deadline"})

    neural_fp32 = {m: fits[m] for m in ("calibnet", "bcnet") if m in fits}
    cost = 1.5 * sum(e["fit_seconds"] for e in neural_fp32.values())
    if len(neural_fp32) < 2:
        run.save("tf32", {"skipped": "needs the calibnet and bcnet fits (--methods)"})
    elif run.time_left() > cost:
        run.save("tf32", tf32(src, ref, dev, sz, neural_fp32, run))
        run.log(f"tf32: {json.dumps(run.doc['tf32'])}")
    else:
        run.save("tf32", {"skipped": f"under {cost:.0f} s (1.5x the fp32 fits) left"})

    bc = fits.get("bcnet", {})
    cpu = run.doc["cpu_vs_device"]["models"]
    kvm = run.doc["kernel_vs_matmul"]
    run.save(
        "targets",
        {
            "bcnet_fit_under_60_s": {
                "seconds": bc.get("fit_seconds"),
                "target": 60.0,
                "met": bc.get("fit_seconds") is not None and bc["fit_seconds"] < 60.0,
            },
            "cpu_and_device_agree": {
                "met": bool(cpu) and all(v["within_tolerance"] for v in cpu.values()),
            },
            "kernel_vs_matmul": {
                "ratio": kvm.get("ratio_on_device"),
                "target": 0.5,
                "met": kvm.get("ratio_on_device") is not None and kvm["ratio_on_device"] >= 0.5,
            },
        },
    )
    run.log(f"wrote {out} ({run.elapsed():.1f} s)")


if __name__ == "__main__":
    main()
