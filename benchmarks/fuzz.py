"""The long fuzzing run: thousands of examples per public entry point.

The same strategies and property as ``tests/test_fuzz.py`` (``tests/fuzz_strategies.py``):
every example must end in success or in a ``HarmoniseError`` whose message names the
problem and the fix, without modifying its inputs. Unlike the test, a failure does not
stop the run: every failing example is recorded (the first few of each kind, with the
example's repr), so one run lists every finding. Examples come from a fixed seed.

Usage: python benchmarks/fuzz.py [--examples 5000] [--entry fit --entry cli ...] [--out F]
Writes benchmarks/results/fuzz.json (example counts per entry point, wall time, findings).
The entry points are independent (each has its own fixed seed), so on a machine with two
cores the run can be split over two processes writing their own ``--out`` files, joined
afterwards by ``python benchmarks/fuzz.py --combine a.json b.json``: the same examples as
one process would run.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import dask
from hypothesis import HealthCheck, given, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fuzz_strategies import ENTRY_POINTS, FuzzFailure, check, strategies

RESULTS = Path(__file__).resolve().parent / "results" / "fuzz.json"
# Examples kept per kind of finding (its first line): enough to see the pattern.
_KEEP = 3


def _run(entry: str, examples: int) -> dict[str, Any]:
    counts: Counter[str] = Counter()
    findings: dict[str, list[str]] = {}
    outcomes: Counter[str] = Counter()

    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategies()[entry])
    def run(case: Any) -> None:
        counts["examples"] += 1
        try:
            outcomes[check(case)] += 1
        except Exception as err:  # FuzzFailure, or an example the harness cannot build
            # One kind per message shape: paths, numbers and reprs of arrays vary.
            text = str(err).splitlines()[0] if str(err) else type(err).__name__
            kind = re.sub(r"\S*/\S*|\d+(\.\d+)?", "#", text)[:160]
            if not isinstance(err, FuzzFailure):
                kind = f"harness {type(err).__name__}: {kind}"
            outcomes["failure"] += 1
            kept = findings.setdefault(kind, [])
            if len(kept) < _KEEP:
                kept.append(repr(case))

    t0 = time.perf_counter()
    run()
    return {
        "examples": counts["examples"],
        "failures": outcomes["failure"],
        "outcomes": dict(outcomes.most_common()),
        "seconds": round(time.perf_counter() - t0, 1),
        "findings": [{"failure": k, "examples": v} for k, v in findings.items()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=5000, help="per entry point")
    parser.add_argument(
        "--entry", action="append", choices=ENTRY_POINTS, help="default: every entry point"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--combine", nargs="+", type=Path, help="join the results of split runs into --out"
    )
    args = parser.parse_args()
    if args.combine:
        _write(_combined(args.combine), args.out)
        return
    entries = args.entry or list(ENTRY_POINTS)
    t0 = time.perf_counter()
    results: dict[str, Any] = {
        "config": {
            "examples_per_entry_point": args.examples,
            "derandomize": True,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "entry_points": {},
    }
    with dask.config.set(scheduler="synchronous"):
        for entry in entries:
            res = _run(entry, args.examples)
            results["entry_points"][entry] = res
            print(
                f"{entry:<22} {res['examples']:>6} examples {res['seconds']:>7.1f} s "
                f"{res['failures']:>5} failures",
                flush=True,
            )
            print("    " + ", ".join(f"{k} {v}" for k, v in res["outcomes"].items()))
            for f in res["findings"]:
                print(f"    {f['failure']}\n      e.g. {f['examples'][0]}", flush=True)
    results["wall_seconds"] = round(time.perf_counter() - t0, 1)
    _write(results, args.out)


def _combined(paths: list[Path]) -> dict[str, Any]:
    parts = [json.loads(p.read_text()) for p in paths]
    configs = {json.dumps(p["config"], sort_keys=True) for p in parts}
    if len(configs) != 1:
        raise SystemExit(f"the runs differ in their configuration: {sorted(configs)}")
    entries: dict[str, Any] = {}
    for part in parts:
        for name, res in part["entry_points"].items():
            if name in entries:
                raise SystemExit(f"entry point {name!r} is in more than one run")
            entries[name] = res
    return {
        "config": {**parts[0]["config"], "processes": len(parts)},
        "entry_points": {e: entries[e] for e in ENTRY_POINTS if e in entries},
        # The processes ran side by side: the longest is the run's wall time.
        "wall_seconds": max(p["wall_seconds"] for p in parts),
    }


def _write(results: dict[str, Any], out: Path) -> None:
    results["failures"] = sum(r["failures"] for r in results["entry_points"].values())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{results['failures']} failures in {results['wall_seconds']} s; wrote {out}")


if __name__ == "__main__":
    main()
