"""The paper acceptance tests against deliberately broken mechanisms (mutation check).

``tests/test_paper.py`` runs its models on explicit, short training budgets. A short budget
is only worth having if the tests still tell a working method from a broken one, so this
script runs the whole module once as it is and once per mutant, each breaking one
mechanism of the method in the library itself (never in the tests):

``mtf``
    The reference MTF blur is skipped: :func:`xharmonise.psf.reference_sigmas` gives a
    point kernel, so the source is sampled, not blurred, to the reference grid before
    every fit (the simulator keeps its true MTF).
``head``
    The variance head is off: the head's NLL is replaced by the loss of a model without
    a head, so the head's output is never trained.
``frozen``
    BCNet's learnable filter is frozen at its initial Gaussian: it can neither move nor
    reshape, so it cannot absorb a mis-registration.
``kept``
    BCNet's filter is kept at inference: the full-resolution prediction is blurred by the
    learned filter and upsampled back, instead of the filter being dropped.

Every test must pass unmutated, and each must fail under the mutant of the mechanism it
checks (``EXPECTED``). Writes ``benchmarks/results/paper_mutants.json``.

Run: ``python benchmarks/paper_mutants.py --jobs 2`` (five runs of the module, two at a
time with one torch thread each; about 15 minutes on two idle cores).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "paper_mutants.json"
MODULE = "tests/test_paper.py"

#: Which tests each mutant must make fail: the mechanism each test is there to check.
EXPECTED = {
    "mtf": {
        "test_toc_calibnet_matches_linear_and_both_beat_initial",
        "test_toa_calibnet_beats_linear_at_2m",
    },
    "head": {"test_variance_head_resists_unmasked_clouds_and_maps_them"},
    "frozen": {"test_bcnet_filters_recover_the_shift"},
    "kept": {"test_bcnet_keeps_2m_detail_where_convcalibnet_blurs_it"},
}


def _set(obj: Any, name: str, value: Any, undo: list[Callable[[], None]]) -> None:
    old = getattr(obj, name)
    setattr(obj, name, value)
    undo.append(lambda: setattr(obj, name, old))


@contextlib.contextmanager
def mutant(name: str) -> Iterator[None]:
    """Break one mechanism of the library for the duration of the block."""
    from xharmonise import losses, psf, training
    from xharmonise.models import bcnet

    undo: list[Callable[[], None]] = []
    if name == "mtf":
        # A Gaussian this narrow is a point kernel on the source grid: sampling, no blur.
        _set(psf, "reference_sigmas", lambda bands, factor: [1e-3] * len(bands), undo)
    elif name == "head":

        def headless(variance: bool, *, masked: bool = False) -> Any:
            return losses.loss_function(False, masked=masked)

        _set(training, "loss_function", headless, undo)
    elif name == "frozen":
        init = bcnet.BCNet.__init__

        def frozen_init(self: Any, *args: Any, **kwargs: Any) -> None:
            init(self, *args, **kwargs)
            self.log_kernels.requires_grad_(False)

        _set(bcnet.BCNet, "__init__", frozen_init, undo)
    elif name == "kept":
        _keep_filter_at_inference(undo)
    elif name != "none":
        raise ValueError(f"unknown mutant {name!r}")
    try:
        yield
    finally:
        for step in reversed(undo):
            step()


def _keep_filter_at_inference(undo: list[Callable[[], None]]) -> None:
    """Predictions of BCNet models blurred by their learned filter (not dropped)."""
    import numpy as np
    from scipy.ndimage import correlate

    from xharmonise import api

    predict = api.predict

    def blurred_predict(src: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
        out = predict(src, model, *args, **kwargs)
        if model.method != "bcnet":
            return out
        filters = np.asarray(model.filters.values, dtype=np.float64)
        pred = out["prediction"]
        data = np.stack(
            [correlate(np.asarray(pred.values[b], np.float64), f, mode="nearest") for b, f in
             enumerate(filters)]
        )  # fmt: skip
        return out.assign(prediction=pred.copy(data=data.astype(pred.dtype)))

    _set(api, "predict", blurred_predict, undo)


class _Mutate:
    """pytest plugin: the mutant holds for the whole session, results are collected."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.outcomes: dict[str, str] = {}
        self._stack = contextlib.ExitStack()

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self._stack.enter_context(mutant(self.name))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self._stack.close()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        test = report.nodeid.split("::")[-1]
        if report.failed:
            # Only a failed assertion is the test catching the mutant; any other exception
            # (a mutant that no longer fits the code it patches) is reported as such.
            crash = getattr(report.longrepr, "reprcrash", None)
            message = crash.message if crash is not None else str(report.longrepr)
            caught = report.when == "call" and message.startswith(("AssertionError", "assert"))
            self.outcomes[test] = "failed" if caught else f"error: {message.splitlines()[0]}"
        elif report.when == "call" and report.passed:
            self.outcomes.setdefault(test, "passed")


def run(name: str) -> dict[str, Any]:
    plugin = _Mutate(name)
    t0 = time.perf_counter()
    pytest.main([MODULE, "-q", "-p", "no:cacheprovider"], plugins=[plugin])
    return {"seconds": round(time.perf_counter() - t0, 1), "outcomes": plugin.outcomes}


def _in_processes(names: list[str], jobs: int) -> dict[str, Any]:
    """Each mutant in its own process (one torch thread each), ``jobs`` at a time."""
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        pending = list(names)
        running: list[tuple[str, subprocess.Popen, Path]] = []
        while pending or running:
            while pending and len(running) < jobs:
                name = pending.pop(0)
                out = Path(tmp) / f"{name}.json"
                cmd = [sys.executable, __file__, "--mutants", name, "--out", str(out)]
                env = dict(os.environ, OMP_NUM_THREADS="1")
                running.append((name, subprocess.Popen(cmd, env=env), out))
            name, proc, out = running.pop(0)
            proc.wait()
            runs.update(json.loads(out.read_text())["runs"])
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", nargs="*", default=["none", *EXPECTED])
    parser.add_argument("--jobs", type=int, default=1, help="mutants run side by side")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.chdir(ROOT)
    results: dict[str, Any] = {"threads": os.environ.get("OMP_NUM_THREADS"), "runs": {}}
    if args.jobs > 1:
        results["threads"] = "1"
        results["runs"] = _in_processes(args.mutants, args.jobs)
    else:
        for name in args.mutants:
            res = run(name)
            failed = {t for t, o in res["outcomes"].items() if o == "failed"}
            errors = {t for t, o in res["outcomes"].items() if o.startswith("error")}
            if name == "none":
                res["ok"] = not failed and not errors and len(res["outcomes"]) > 0
            else:
                res["must_fail"] = sorted(EXPECTED[name])
                res["ok"] = not errors and EXPECTED[name] <= failed
            results["runs"][name] = res
            print(name, json.dumps(res, indent=1), flush=True)
    results["all_ok"] = all(r["ok"] for r in results["runs"].values())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"all_ok={results['all_ok']}; wrote {args.out}")


if __name__ == "__main__":
    main()
