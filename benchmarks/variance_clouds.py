"""Where CalibNet's 2 m error on clear pixels comes from when the source has unmasked clouds.

Four CalibNet fits on a simulated 1000² TOA pair (seed 5, the acceptance test's): on the
cloud-free pair and on the same pair with 10 % unmasked source clouds, each with and
without the variance head. Every model is applied to the cloudy source at 2 m and scored
against the simulator's truth on cloud-free pixels, broken down by distance to the nearest
cloud pixel and by source brightness (mean over bands; quantiles of the clear pixels).
Writes ``benchmarks/results/variance_clouds.json``.

Run: ``python benchmarks/variance_clouds.py`` (about 6 minutes on 2 idle cores).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import distance_transform_edt

import xharmonise
from xharmonise.metrics import roc_auc
from xharmonise.simulate import simulate_pair

RESULTS = Path(__file__).resolve().parent / "results" / "variance_clouds.json"
SIZE, SEED, CLOUDS = 1000, 5, 0.1


def _rmse(err: np.ndarray, where: np.ndarray) -> float:
    return float(np.sqrt((err[where] ** 2).mean())) if where.any() else float("nan")


def main() -> None:
    cloudy = simulate_pair((SIZE, SIZE), seed=SEED, toa=True, src_clouds=CLOUDS)
    clean = simulate_pair((SIZE, SIZE), seed=SEED, toa=True)
    src = cloudy.src.values.astype(np.float64)
    truth = cloudy.truth.reflectance.values.astype(np.float64)
    clouds = cloudy.truth.src_clouds.values
    clear = ~clouds & np.isfinite(src).all(0) & np.isfinite(truth).all(0)
    dist = distance_transform_edt(~clouds)
    bright = src.mean(0)
    q50, q90, q99 = np.quantile(bright[clear], [0.5, 0.9, 0.99])
    groups = {
        "distance_px": {
            "<=2": dist <= 2,
            "2-10": (dist > 2) & (dist <= 10),
            "10-50": (dist > 10) & (dist <= 50),
            ">50": dist > 50,
        },
        "brightness_quantile": {
            "<=50%": bright <= q50,
            "50-90%": (bright > q50) & (bright <= q90),
            "90-99%": (bright > q90) & (bright <= q99),
            ">99%": bright > q99,
        },
    }
    results: dict[str, Any] = {"config": {"size": SIZE, "seed": SEED, "src_clouds": CLOUDS}}
    for name, pair, variance in (
        ("clean", clean, False),
        ("clean_variance", clean, True),
        ("clouds", cloudy, False),
        ("clouds_variance", cloudy, True),
    ):
        t0 = time.perf_counter()
        model = xharmonise.fit(
            pair.src, pair.ref, method="calibnet", variance=variance, progress=False
        )
        seconds = time.perf_counter() - t0
        out = xharmonise.predict(cloudy.src, model)
        err = np.sqrt(((out["prediction"].values.astype(np.float64) - truth) ** 2).mean(0))
        sq = np.sort(err[clear] ** 2)[::-1]
        entry: dict[str, Any] = {
            "fit_seconds": seconds,
            "rmse_clear": _rmse(err, clear),
            "share_of_squared_error_in_worst_1pct": float(sq[: sq.size // 100].sum() / sq.sum()),
        }
        for group, parts in groups.items():
            entry[group] = {k: _rmse(err, clear & m) for k, m in parts.items()}
        if "variance" in out:
            var = out["variance"].values.astype(np.float64).mean(0)
            valid = np.isfinite(var) & np.isfinite(src).all(0)
            entry["cloud_auc"] = float(roc_auc(var[valid], clouds[valid]))
            # Does σ² also flag the clear pixels the model gets wrong?
            entry["corr_log_variance_log_error_clear"] = float(
                np.corrcoef(np.log(var[clear]), np.log(err[clear] + 1e-6))[0, 1]
            )
        results[name] = entry
        print(name, json.dumps(entry), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
