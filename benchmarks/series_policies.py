"""Which reference dates to learn from: every date policy side by side on simulated series.

A simulated 1000² scene (seed 0) with Sentinel-2 dates 9 and 4 days before, 1 day before
(the nearest), and 3 and 8 days after the Pleiades date: crops grow between dates and
some parcels are harvested two days after it. The nearest date is cloud-free, lightly
cloudy (10 %), mostly cloudy (90 %) or overcast (100 %); the other dates are 10 %
cloudy. Each policy (``auto``, ``nearest``, ``all``; and each single date on its own) is
fitted with ``linear`` and ``calibnet`` and scored at 2 m against the truth at the source
date, relative to the same method fitted on the cloud-free nearest date. Writes
``benchmarks/results/series_policies.json``.

Run: ``python benchmarks/series_policies.py [--methods linear,calibnet] [--size 1000]``
(about 10 minutes on 2 idle cores with both methods).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import xharmonise
from xharmonise.errors import HarmoniseError
from xharmonise.simulate import simulate_series
from xharmonise.validation import score_against_truth

RESULTS = Path(__file__).resolve().parent / "results" / "series_policies.json"
DAYS = (-9, -4, -1, 3, 8)
NEAREST = 2  # index of the day-before date in DAYS
COVERS = {"clear": 0.0, "light": 0.1, "heavy": 0.9, "overcast": 1.0}
BUDGETS = {"linear": None, "calibnet": 300}


def _rmse(model: xharmonise.Harmoniser, truth: Any) -> float:
    return float(score_against_truth(model, truth)["rmse_clear"].sel(stage="model").mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="linear,calibnet")
    parser.add_argument("--size", type=int, default=1000)
    args = parser.parse_args()
    methods = args.methods.split(",")
    shape = (args.size, args.size)
    clean = simulate_series(shape, seed=0, days=DAYS, harvest_day=2)
    results: dict[str, Any] = {
        "config": {"size": args.size, "days": DAYS, "harvest_day": 2, "covers": COVERS},
        "rows": [],
    }
    policies: list[Any] = ["auto", "nearest", "all"] + [[str(d)[:10]] for d in clean.dates]
    for cover_name, cover in COVERS.items():
        clouds = [0.1] * len(DAYS)
        clouds[NEAREST] = cover
        series = simulate_series(shape, seed=0, days=DAYS, harvest_day=2, ref_clouds=clouds)
        for method in methods:
            yardstick = _rmse(
                xharmonise.fit(
                    clean.src,
                    clean.ref,
                    method=method,
                    dates="nearest",
                    iterations=BUDGETS[method],
                    progress=False,
                ),
                clean,
            )
            for policy in policies:
                start = time.perf_counter()
                row: dict[str, Any] = {
                    "cover": cover_name,
                    "method": method,
                    "policy": policy if isinstance(policy, str) else f"only {policy[0]}",
                }
                try:
                    model = xharmonise.fit(
                        series.src,
                        series.ref,
                        method=method,
                        mask=series.mask,
                        dates=policy,
                        iterations=BUDGETS[method],
                        progress=False,
                    )
                except HarmoniseError as err:
                    row["error"] = f"{type(err).__name__}: {str(err)[:120]}"
                else:
                    rmse = _rmse(model, clean)
                    row.update(
                        rmse=rmse,
                        ratio_to_clear_nearest=rmse / yardstick,
                        used=model.fit_report.dates["used"],
                        train_pixels=model.fit_report.dates["train_pixels"],
                    )
                row["seconds"] = time.perf_counter() - start
                results["rows"].append(row)
                shown = (
                    f"{row['ratio_to_clear_nearest']:.3f}x  used {len(row['used'])}"
                    if "rmse" in row
                    else row["error"][:60]
                )
                print(f"{cover_name:9s} {method:9s} {row['policy']:18s} {shown}", flush=True)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
