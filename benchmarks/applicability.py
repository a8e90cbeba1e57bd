"""What the applicability costs: its share of fit time and of predict throughput.

In one run, on a simulated TOA pair (``--size`` source pixels a side, seed 0):

* fit: the stages of :func:`xharmonise.fit` timed one by one (``stages.run``'s order),
  for ``linear`` (the cheapest fit, the worst case for a fixed cost) and ``calibnet``
  (``--iterations`` steps); the ratio is ``training_domain``'s time over the whole fit's;
* predict: ``predict(src, model).compute()`` of the calibnet model on a lazy source of
  ``--predict-size`` pixels a side in ``--chunks`` chunks, with and without
  ``with_applicability=True`` (the latter also reads the sampled chunks at predict time,
  counted), best of ``--repeat``; the ratio is the throughput lost.

Targets (#15): under 10 % of fit time, under 5 % of predict throughput.

Usage: python benchmarks/applicability.py [--size 1000] [--iterations 300]
       [--predict-size 2048] [--chunks 512] [--repeat 3]
Writes benchmarks/results/applicability.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import xharmonise
from xharmonise import stages
from xharmonise.errors import OutOfDomainWarning
from xharmonise.models.registry import method
from xharmonise.simulate import simulate_pair

RESULTS = Path(__file__).resolve().parent / "results" / "applicability.json"


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _fit_stages(pair: Any, name: str, iterations: int) -> tuple[xharmonise.Harmoniser, dict]:
    """stages.run's sequence, each stage timed."""
    spec = method(name)
    t: dict[str, float] = {}
    paired, t["reflectance_pair"] = _timed(lambda: stages.reflectance_pair(pair.src, pair.ref))
    prepared, t["prepare_pair"] = _timed(
        lambda: stages.prepare_pair(
            paired, mask=None, coregister=False, measure=spec.measures_shift, seed=0
        )
    )
    data, t["build_training_data"] = _timed(
        lambda: stages.build_training_data(
            prepared, spec, patch_size=32, test_fraction=0.1, max_patches=None, seed=0
        )
    )
    linear, t["fit_baseline"] = _timed(lambda: stages.fit_baseline(data))
    trained = None
    if spec.neural:
        trained, t["train_network"] = _timed(
            lambda: stages.train_network(
                prepared, data, spec, linear, variance=False, iterations=iterations,
                batch_size=None, seed=0, device="cpu", progress=False,
            )
        )  # fmt: skip
    calibration, t["calibrate"] = _timed(lambda: stages.calibrate(data, linear, trained))
    domain, t["training_domain"] = _timed(lambda: stages.training_domain(prepared, data, seed=0))
    evaluation, t["evaluate"] = _timed(
        lambda: stages.evaluate(
            data, linear, trained, paired.ref_bands, seed=0, calibration=calibration
        )
    )
    model, t["assemble"] = _timed(
        lambda: stages.assemble(
            prepared, data, spec, linear, trained, evaluation, variance=False,
            calibration=calibration, domain=domain,
        )
    )  # fmt: skip
    total = sum(t.values())
    return model, {
        "seconds": t,
        "total_s": total,
        "domain_share_of_fit": t["training_domain"] / total,
        "domain_pixels": domain.pixels,
        "domain_patches": domain.patches,
        "components": domain.components,
    }


def _best(fn: Callable[[], Any], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        _, s = _timed(fn)
        times.append(s)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--predict-size", type=int, default=2048)
    parser.add_argument("--chunks", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    pair = simulate_pair((args.size, args.size), seed=0, toa=True)
    res: dict[str, Any] = {
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    _, res["fit_linear"] = _fit_stages(pair, "linear", args.iterations)
    model, res["fit_calibnet"] = _fit_stages(pair, "calibnet", args.iterations)
    print(json.dumps({k: res[k] for k in ("fit_linear", "fit_calibnet")}, indent=1), flush=True)

    big = simulate_pair((args.predict_size, args.predict_size), seed=1, toa=True)
    src = big.src.chunk({"band": -1, "y": args.chunks, "x": args.chunks}).persist()

    def run(with_applicability: bool) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OutOfDomainWarning)
            out = xharmonise.predict(src, model, with_applicability=with_applicability)
        out.compute()

    # Interleaved, best of each: a shared machine's load moves both alike.
    run(False)
    run(True)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.repeat):
        for flag in (False, True):
            times[flag].append(_timed(lambda flag=flag: run(flag))[1])
    without, with_app = min(times[False]), min(times[True])
    pixels = args.predict_size**2
    # The same on one block, single-threaded, without Dask: the network's kernel against
    # the applicability's score (the CPU work each adds per pixel).
    block = big.src.values[:, : args.chunks, : args.chunks]
    from xharmonise.inference import map_pixels

    kernel = _best(lambda: map_pixels(block, model), args.repeat)
    score = _best(lambda: model.domain.applicability(block), args.repeat)
    res["predict"] = {
        "seconds_without": without,
        "seconds_with_applicability": with_app,
        "pixels_per_s_without": pixels / without,
        "pixels_per_s_with": pixels / with_app,
        "throughput_lost": 1 - without / with_app,
        "runs_without": times[False],
        "runs_with": times[True],
        "block_seconds_network": kernel,
        "block_seconds_applicability": score,
        "block_cost_ratio": score / kernel,
    }
    res["targets"] = {
        "fit_under_10_percent": res["fit_calibnet"]["domain_share_of_fit"] < 0.10,
        "predict_under_5_percent": res["predict"]["throughput_lost"] < 0.05,
        "block_cost_under_5_percent": res["predict"]["block_cost_ratio"] < 0.05,
    }
    print(json.dumps({k: res[k] for k in ("predict", "targets")}, indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
