"""Coverage of calibrated σ² on held-out clear pixels, against the simulator's truth (#15).

For the TOC, TOA and unmasked-cloud (TOA, 10 % source clouds) simulated 1000² pairs
(seed 5, patch_size 16: 13 validation and 14 test patches), each model is fitted as
``fit`` fits it (``stages``), its σ² calibrated on the validation patches
(``stages.calibrate``), and scored on the test patches at the reference resolution, on
the pixels the simulator says are clear (no source cloud within the MTF blur: the
truth's cloud map, blurred like the source, below 1e-3): coverage of ±1σ, ±1.96σ and
±2.58σ before and after the calibration. Before is the head's own σ², or for a model
without a head one σ² per band (the validation residuals' mean square).

Models: linear and CalibNet without a head (300 steps), CalibNet with the head at 300
steps and at the CPU budget (3000 steps), BCNet with the head at 1000 steps; when named,
CalibNet with the head at 10000 steps and BCNet with the head at its CPU budget (3600) and
at 10000 steps. Writes ``benchmarks/results/calibration.json``.

Run: ``python benchmarks/calibration.py [--seeds N,...] [--size PX] [PAIR[:MODEL,...] ...]``
(PAIR toc, toa or cloudy; about 6 minutes of CPU per pair at one thread); the pairs (and
models) given are (re)measured, the others' figures are kept. ``--seeds`` trains with
other seeds (default 0) and ``--size`` simulates another pair size (default 1000): their
entries are named ``PAIR/MODEL/seedN`` and ``PAIR/MODEL/PXpx``, so that how much of a
coverage figure is the training's luck or the test split's sample can be read beside it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xharmonise import grid, psf, sampling, stages
from xharmonise.calibration import LEVELS
from xharmonise.models.linear import apply_linear
from xharmonise.models.registry import Method
from xharmonise.models.registry import method as method_spec
from xharmonise.simulate import simulate_pair

RESULTS = Path(__file__).resolve().parent / "results" / "calibration.json"
SIZE, SEED, PATCH = 1000, 5, 16
PAIRS = {"toc": {}, "toa": {"toa": True}, "cloudy": {"toa": True, "src_clouds": 0.1}}
MODELS = {  # name: (method, variance head, iterations)
    "linear": ("linear", False, None),
    "calibnet_300": ("calibnet", False, 300),
    "calibnet_head_300": ("calibnet", True, 300),
    "calibnet_head_3000": ("calibnet", True, 3000),
    "bcnet_head_1000": ("bcnet", True, 1000),
}
#: Only when named (``cloudy:calibnet_head_10000``: about 5 minutes of CPU): heads trained
#: for 10000 steps, and BCNet's at its whole CPU budget.
LONG = {
    "calibnet_head_10000": ("calibnet", True, 10000),
    "bcnet_head_3600": ("bcnet", True, 3600),
    "bcnet_head_10000": ("bcnet", True, 10000),
}


def _coverage(residual: np.ndarray, variance: np.ndarray) -> list[float]:
    z = np.abs(residual) / np.sqrt(variance)
    return [round(float(np.mean(z <= k)), 4) for k in LEVELS]


def _clear_test_pixels(pair: Any, prepared: stages.PreparedPair, data: stages.TrainingData):
    """(patch, y, x) True where the test pixel is free of source clouds, MTF included."""
    clouds = pair.truth.src_clouds.astype("float32").expand_dims(band=[0])
    aligned = np.asarray(grid.align_source(clouds, prepared.grid).values, np.float32)
    share = psf.degrade_array(aligned, [max(prepared.sigmas)], prepared.grid.factor)[0]
    return sampling.windows(data.index, data.test_cells, share) < 1e-3


def main(names: list[str], seeds: list[int], size: int) -> None:
    torch.set_num_threads(1)
    _record("config", {"size": SIZE, "seed": SEED, "patch_size": PATCH, "models": MODELS | LONG})
    for arg in names:
        pair_name, _, chosen = arg.partition(":")
        options = PAIRS[pair_name]
        models = {k: (MODELS | LONG)[k] for k in chosen.split(",")} if chosen else MODELS
        pair = simulate_pair((size, size), seed=SEED, **options)
        paired = stages.reflectance_pair(pair.src, pair.ref)
        for name, (method, head, iterations) in models.items():
            spec = method_spec(method)
            # The pair's preparation, patches and clear mask do not depend on the seed.
            prepared = stages.prepare_pair(
                paired, mask=None, coregister=False, measure=spec.measures_shift, seed=0
            )
            data = stages.build_training_data(
                prepared, spec, patch_size=PATCH, test_fraction=0.1, max_patches=None, seed=0
            )
            clear = _clear_test_pixels(pair, prepared, data)
            for seed in seeds:
                entry = _measure(prepared, data, spec, clear, head, iterations, seed)
                key = f"{pair_name}/{name}" + (f"/seed{seed}" if seed else "")
                key += f"/{size}px" if size != SIZE else ""
                print(key, json.dumps({k: entry[k] for k in ("before", "after")}))
                _record(key, entry)


def _measure(
    prepared: stages.PreparedPair,
    data: stages.TrainingData,
    spec: Method,
    clear: np.ndarray,
    head: bool,
    iterations: int | None,
    seed: int,
) -> dict[str, Any]:
    """Fit one model with one training seed, calibrate it and score it on the clear test
    pixels."""
    t0 = time.process_time()
    linear = stages.fit_baseline(data)
    trained = None
    if spec.neural:
        trained = stages.train_network(
            prepared,
            data,
            spec,
            linear,
            variance=head,
            iterations=iterations,
            batch_size=None,
            seed=seed,
            device="cpu",
            progress=False,
        )
    seconds = time.process_time() - t0
    t0 = time.process_time()
    cal = stages.calibrate(data, linear, trained)
    cal_seconds = time.process_time() - t0
    held = data.held_out
    if trained is None:
        prediction = apply_linear(linear, held.src, axis=1)
    else:
        prediction = trained.prediction
    before, after = stages.variance_before_after(data, linear, trained, cal, prediction)
    residual = prediction - held.ref
    entry: dict[str, Any] = {
        "kind": cal.kind,
        "validation_patches": cal.patches,
        "knots_per_band": [len(k) for k in cal.knots],
        "train_cpu_seconds": round(seconds, 1),
        "calibration_cpu_seconds": round(cal_seconds, 3),
        "clear_test_pixels": int(clear.sum()),
        "clear_test_rmse": [
            round(float(np.sqrt(np.mean(residual[:, b][clear] ** 2))), 5)
            for b in range(residual.shape[1])
        ],
        "levels": list(LEVELS),
    }
    for stage, var in (("before", before), ("after", after)):
        entry[stage] = {
            band: _coverage(residual[:, b][clear], var[:, b][clear])
            for b, band in enumerate(prepared.paired.ref_bands)
        }
    return entry


def _record(key: str, entry: dict[str, Any]) -> None:
    """Write one entry into the results, read afresh: runs of other pairs or seeds may
    have written theirs meanwhile."""
    results = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.exists() else {}
    results[key] = entry
    RESULTS.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="*", default=list(PAIRS), help="PAIR[:MODEL,...]")
    parser.add_argument("--seeds", default="0", help="training seeds, comma-separated")
    parser.add_argument("--size", type=int, default=SIZE, help="pair size in source pixels")
    args = parser.parse_args()
    main(args.pairs, [int(v) for v in args.seeds.split(",")], args.size)
