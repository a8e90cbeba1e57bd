"""The ``xharmonise`` command: fit, predict, evaluate, report, info and demo.

Each subcommand is a thin layer over the library: it opens the inputs lazily with
rioxarray, calls :func:`xharmonise.fit`, :func:`xharmonise.predict`,
:func:`xharmonise.evaluate`, :func:`xharmonise.to_zarr` or :func:`xharmonise.plot.report`,
and prints what a user
needs to judge the result (the metrics table, what was written where).

Exit codes: 0 on success; 1 when the library refuses an input (any
:class:`~xharmonise.errors.HarmoniseError`), an input cannot be read or an output
cannot be written; 2 for usage errors. Errors are one line on stderr,
``xharmonise: error: <message>``; ``--debug`` re-raises them with their traceback.
Progress bars (training, Zarr writes) go to stderr, so stdout holds only results;
``--quiet`` turns them off.

Examples
--------
>>> import numpy as np, xarray as xr, xharmonise
>>> from xharmonise.cli import main
>>> ds = xr.Dataset({"prediction": (("band", "y", "x"), np.zeros((1, 4, 4), "f4"))})
>>> xharmonise.to_zarr(ds, "memory://cli-doc.zarr")
>>> main(["info", "memory://cli-doc.zarr"])
store                memory://cli-doc.zarr
status               complete
dimensions           band: 1, y: 4, x: 4
variable prediction  float32 (band, y, x) 1 x 4 x 4, chunks (1, 4, 4), shards (1, 4, 4)
crs                  none
transform            (1, 0, 0, 0, 1, 0)
bands                none
0

A usage error prints one line on stderr and returns 2:

>>> main(["fit", "src.tif", "ref.tif", "--method", "nope"])
2
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import xharmonise
from xharmonise.dates import DEFAULT_MAX_DAYS, POLICIES
from xharmonise.evaluation import FIT_DEFAULTS
from xharmonise.harmoniser import check_destination
from xharmonise.models.registry import METHODS
from xharmonise.runfiles import (
    InputError,
    format_metrics,
    format_table,
    one_line,
    open_mask,
    open_mask_series,
    open_raster,
    open_series,
    shift_estimates,
)

if TYPE_CHECKING:
    import xarray as xr

    from xharmonise.harmoniser import Harmoniser
    from xharmonise.store import StoreInfo

__all__ = [
    "build_parser",
    "format_dates",
    "format_evaluation",
    "format_model_info",
    "format_store_info",
    "main",
    "parse_bands",
    "parse_date_policy",
    "parse_dates",
    "parse_offset",
    "parse_scale",
]

PROG = "xharmonise"
EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
# Reading chunks: one Dask chunk per Zarr shard downstream (store.py's default shard).
_CHUNK = 2048


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (the usage text is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


# --------------------------------------------------------------------------- helpers
def parse_bands(text: str) -> dict[str, str] | list[str]:
    """Parse ``--bands``: ``"B0=B2,B1=B3"`` (pairs) or ``"B2,B3,B4,B8"`` (reference bands).

    Examples
    --------
    >>> parse_bands("B0=B2, B1=B3")
    {'B0': 'B2', 'B1': 'B3'}
    >>> parse_bands("B2,B3")
    ['B2', 'B3']
    """
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("give bands as SRC=REF pairs or a list of REF bands")
    pairs = [t.partition("=") for t in items]
    if all(eq for _, eq, _ in pairs):
        if any(not s.strip() or not r.strip() for s, _, r in pairs):
            raise argparse.ArgumentTypeError(f"{text!r}: each pair is SRC=REF, e.g. B0=B2")
        return {s.strip(): r.strip() for s, _, r in pairs}
    if any(eq for _, eq, _ in pairs):
        raise argparse.ArgumentTypeError(
            f"{text!r} mixes SRC=REF pairs and plain names: use one form"
        )
    return items


def _parse_pair(text: str, what: str, example: str) -> float | tuple[float | None, float | None]:
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [float(p) if p else None for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not {what}: give a number ({example}) or SRC,REF ({example},{example})"
        ) from None
    if len(values) == 1 and values[0] is not None:
        return values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise argparse.ArgumentTypeError(f"{text!r}: give one value or SRC,REF")


def parse_scale(text: str) -> float | tuple[float | None, float | None]:
    """Parse ``--scale``: one DN scale for both inputs, or ``SRC,REF`` (either may be empty).

    Examples
    --------
    >>> parse_scale("1e-4")
    0.0001
    >>> parse_scale(",1e-4")
    (None, 0.0001)
    """
    return _parse_pair(text, "a scale", "1e-4")


def parse_offset(text: str) -> float | tuple[float | None, float | None]:
    """Parse ``--offset``: one reflectance offset for both inputs, or ``SRC,REF``.

    Examples
    --------
    >>> parse_offset(",-0.1")  # Sentinel-2 L2A since processing baseline 04.00
    (None, -0.1)
    """
    return _parse_pair(text, "an offset", "-0.1")


def parse_dates(text: str) -> list[str]:
    """Parse ``--ref-dates``: comma-separated dates, one per REF raster, in their order.

    Examples
    --------
    >>> parse_dates("2024-06-01, 2024-06-11T10:56:19Z")
    ['2024-06-01', '2024-06-11T10:56:19Z']
    """
    from xharmonise.dates import as_date
    from xharmonise.errors import DateError

    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("give dates such as 2024-06-01,2024-06-11")
    for item in items:
        try:
            as_date(item, "date")
        except DateError:
            raise argparse.ArgumentTypeError(
                f"{item!r} is not a date: give ISO dates such as 2024-06-01,2024-06-11"
            ) from None
    return items


def parse_date_policy(text: str) -> str | list[str]:
    """Parse ``--dates``: a policy name (auto, nearest, all) or the reference dates to use.

    Examples
    --------
    >>> parse_date_policy("nearest"), parse_date_policy("2024-06-11,2024-06-14")
    ('nearest', ['2024-06-11', '2024-06-14'])
    """
    if text.strip() in POLICIES:
        return text.strip()
    try:
        return parse_dates(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a policy ({', '.join(POLICIES)}) or reference dates such as "
            "2024-06-11,2024-06-14"
        ) from None


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:  # NaN too
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
    return value


def _format_sampling(sampling: dict[str, Any]) -> str:
    cap = sampling["max_patches"]
    return (
        f"patches of {sampling['patch_size']} px, {sampling['test_fraction']:g} held out, "
        f"{'no cap' if cap is None else f'at most {cap}'}, seed {sampling['seed']}"
    )


#: What ``evaluate`` assumes for a model saved before fit recorded its sampling.
_FIT_SAMPLING = _format_sampling(FIT_DEFAULTS) + " for a model saved without them"


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be positive")
    return value


def format_store_info(info: StoreInfo) -> str:
    """Text shown by ``xharmonise info``: one ``key  value`` line per fact."""
    status = (
        "complete"
        if info.complete
        else f"INCOMPLETE: {info.regions_done} of {info.regions_total} regions written "
        "(finish it with `xharmonise predict --resume`)"
    )
    rows: list[tuple[str, str]] = [("store", info.store), ("status", status)]
    sizes = ", ".join(f"{k}: {v}" for k, v in info.sizes.items())
    rows.append(("dimensions", sizes))
    for name, v in info.variables.items():
        shape = " x ".join(map(str, v["shape"]))
        rows.append(
            (
                f"variable {name}",
                f"{v['dtype']} ({', '.join(v['dims'])}) {shape}, "
                f"chunks {tuple(v['chunks'])}, shards {tuple(v['shards'])}",
            )
        )
    rows.append(("crs", info.crs or "none"))
    if info.transform is not None:
        rows.append(("transform", "(" + ", ".join(f"{t:.15g}" for t in info.transform) + ")"))
    rows.append(("bands", ", ".join(info.bands) or "none"))
    for key, value in info.attrs.items():
        text = ", ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
        rows.append((key, text))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def format_dates(model: Harmoniser) -> str:
    """The reference dates a model was fitted on and its held-out RMSE per date, as text.

    ``""`` for a model fitted on one reference image.

    Examples
    --------
    >>> import xharmonise
    >>> from xharmonise.simulate import simulate_series
    >>> series = simulate_series((400, 400), seed=0, days=(-9, -1, 3),
    ...                          ref_clouds=[0.1, 0.9, 0.1])
    >>> model = xharmonise.fit(series.src, series.ref, method="linear", mask=series.mask,
    ...                        patch_size=16, progress=False)
    >>> print(format_dates(model).splitlines()[0])
    reference dates: source 2024-06-15T00:00:00, policy auto within ±30 days; 2 of 3 used
    """
    record = model.fit_report.dates
    if not record:
        return ""
    used = list(record.get("used", []))
    candidates = record.get("candidates", [])
    policy = str(record.get("policy", "?"))
    if policy != "explicit" and record.get("max_days") is not None:
        policy += f" within ±{float(record['max_days']):g} days"
    lines = [
        f"reference dates: source {record.get('source', '?')}, policy {policy}; "
        f"{len(used)} of {len(candidates)} used"
    ]
    pixels, patches = record.get("train_pixels", {}), record.get("train_patches", {})
    width = max([len(str(c.get("date", "?"))) for c in candidates] + [4])
    lines.append(
        f"{'date':<{width}}  {'days':>6}  {'clear px':>9}  {'used':>4}  {'train px':>9}  "
        f"{'train patches':>13}"
    )
    for c in candidates:
        date = str(c.get("date", "?"))
        taken = date in used
        order = str(used.index(date) + 1) if taken else "-"
        lines.append(
            f"{date:<{width}}  {float(c.get('days', float('nan'))):>+6.1f}  "
            f"{int(c.get('clear_pixels', 0)):>9}  {order:>4}  "
            f"{pixels.get(date, '-') if taken else '-':>9}  "
            f"{patches.get(date, '-') if taken else '-':>13}"
        )
    table = model.fit_report.date_metrics
    if table is not None:
        rmse = table.sel(metric="rmse")
        stages = [s for s in ("linear", "model") if s in rmse["stage"].values]
        dates = [str(d) for d in rmse["date"].values]
        cols = max([len(d) for d in dates] + [9])
        lines.append(
            "held-out RMSE per date used, reflectance units (-: no test pixel from that date)"
        )
        lines.append(f"{'band':<5} {'stage':<7} " + " ".join(f"{d:>{cols}}" for d in dates))
        for band in rmse["band"].values:
            for stage in stages:
                values = rmse.sel(band=band, stage=stage).values
                cells = " ".join(
                    f"{'-':>{cols}}" if math.isnan(v) else f"{v:>{cols}.4f}" for v in values
                )
                lines.append(f"{band!s:<5} {stage:<7} {cells}")
    return "\n".join(lines)


def format_model_info(model: Harmoniser) -> str:
    """Text shown by ``xharmonise info MODEL`` and ``fit``: the model, its test metrics,
    its shift estimates and, for a reference time series, its dates."""
    parts = [repr(model), format_metrics(model)]
    shifts = shift_estimates(model)
    if shifts:
        parts.append(f"shift of the source, m (east, north), band mean: {_format_shifts(shifts)}")
    dates = format_dates(model)
    if dates:
        parts.append(dates)
    sampling = model.sampling
    parts.append(
        f"sampling: {_format_sampling(sampling)}"
        if sampling is not None
        else "sampling: unknown (saved before fit recorded it; evaluate assumes fit's defaults)"
    )
    return "\n".join(parts)


def format_evaluation(scores: xr.Dataset) -> str:
    """Text shown by ``xharmonise evaluate``: the metric table of
    :func:`xharmonise.evaluate` and the coverage of σ² beside its nominal value.

    Examples
    --------
    >>> import xharmonise
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((400, 400), seed=0)
    >>> model = xharmonise.fit(pair.src, pair.ref, method="linear", patch_size=16)
    >>> scores = xharmonise.evaluate(pair.src, pair.ref, model, patch_size=16)
    >>> print(format_evaluation(scores).splitlines()[0])
    metrics, reflectance units (all: 16 of 16 valid patches of 16 px, 4096 clear pixels)
    """
    import xarray as xr

    a = scores.attrs
    title = (
        f"metrics, reflectance units ({a['split']}: {a['patches']} of {a['valid_patches']} "
        f"valid patches of {a['patch_size']} px, {a['pixels']} clear pixels)"
    )
    parts = [format_table(scores["metrics"], title)]
    if "calibration" in scores:
        cal = scores["calibration"]
        nominal = cal["nominal"].broadcast_like(cal)
        side = xr.concat([cal.drop_vars("nominal"), nominal.drop_vars("nominal")], "sigma")
        side = side.assign_coords(sigma=["observed", "nominal"]).transpose("band", "measure", ...)
        how = "calibrated on the validation patches" if a["calibration"] != "none" else "raw"
        parts.append(format_table(side, f"σ² ({a['variance_kind']}, {how}): coverage and NLL"))
    if "coregistration_shift" in a:
        east, north = a["coregistration_shift"]
        parts.append(f"source corrected by the shift (east, north), m: ({east:+.2f}, {north:+.2f})")
    return "\n".join(parts)


def _evaluation_json(scores: xr.Dataset) -> dict[str, Any]:
    """The result of :func:`xharmonise.evaluate` as JSON-able nested dicts (NaN: null)."""

    def nested(var: xr.DataArray) -> Any:
        if var.ndim == 0:
            value = float(var)
            return None if math.isnan(value) else value
        dim = var.dims[0]
        return {str(k): nested(var.isel({dim: i})) for i, k in enumerate(var[dim].values)}

    out: dict[str, Any] = {k: v for k, v in scores.attrs.items()}
    for name, var in scores.data_vars.items():
        out[str(name)] = nested(var.reset_coords(drop=True))
    if "calibration" in scores:
        out["nominal_coverage"] = nested(scores["calibration"]["nominal"].reset_coords(drop=True))
    return out


def _write_evaluation(scores: xr.Dataset, path: Path) -> None:
    """The scores as JSON (nested) or CSV (one row per value), by the file's suffix."""
    import json

    import pandas as pd

    if path.suffix.lower() == ".json":
        text = json.dumps(_evaluation_json(scores), indent=2, allow_nan=False) + "\n"
        path.write_text(text, encoding="utf-8")
        return
    frames = [
        var.to_dataframe(name="value").reset_index().assign(table=str(name))
        for name, var in scores.data_vars.items()
    ]
    table = pd.concat(frames, ignore_index=True)
    first = ["table", "band", "metric", "measure", "stage", "date"]
    columns = [c for c in first if c in table] + [c for c in table if c not in first]
    table[columns].to_csv(path, index=False)


def _table_destination(args: argparse.Namespace) -> Path | None:
    """``--out`` of ``evaluate``, refused before any work when it cannot be written."""
    if args.out is None:
        return None
    out = Path(args.out)
    if out.suffix.lower() not in (".json", ".csv"):
        raise _usage(args, f"--out {out}: give a .json or .csv file")
    if out.is_dir():
        raise InputError(f"{out} is a folder: give a file path, e.g. {out / 'scores.json'}")
    if not out.parent.is_dir():
        raise InputError(
            f"cannot write {out}: the folder {out.parent} does not exist: create it first or "
            "choose another path"
        )
    return out


def _cli_wording(message: str) -> str:
    # Library messages name keyword arguments; on the command line the fix is a flag.
    for api, flag in (("mode='w'", "--overwrite"), ("resume=True", "--resume")):
        message = message.replace(api, flag)
    return message


@contextmanager
def _scheduler(address: str | None) -> Iterator[None]:
    """The threaded scheduler, or a ``distributed`` client of the cluster at ``address``."""
    if address is None:
        import dask

        with dask.config.set(scheduler="threads"):
            yield
        return
    from distributed import Client

    try:
        client = Client(address, timeout="20s")
    except (OSError, TimeoutError) as err:
        raise InputError(f"cannot reach the Dask scheduler at {address}: {one_line(err)}") from err
    with client:
        yield


def _echo(*args: Any) -> None:
    print(*args, flush=True)


def _method_help(default: str) -> str:
    listed = "; ".join(f"{m.name}: {m.summary}" for m in METHODS.values())
    return f"{listed} (default {default})"


# --------------------------------------------------------------------------- commands
def _open_pair(
    args: argparse.Namespace,
) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray | None]:
    """The source, the reference and the optional mask that ``fit`` and ``evaluate`` read.

    Several REF rasters are one per date: stacked lazily along ``time`` (dated by
    ``--ref-dates``, their tags or their names), with their masks stacked likewise.
    """
    refs, masks = list(args.ref), list(args.mask or [])
    if args.ref_dates is not None and len(args.ref_dates) != len(refs):
        raise _usage(
            args,
            f"--ref-dates gives {len(args.ref_dates)} dates for {len(refs)} REF rasters: "
            "give one date per REF, in the same order",
        )
    if masks and len(masks) != len(refs):
        # One cloud mask for several dates would mask the wrong clouds on all but one.
        raise _usage(
            args,
            f"{len(masks)} --mask for {len(refs)} REF rasters: give one --mask per REF, in "
            "the same order",
        )
    src = open_raster(args.src, what="the source", chunks=args.chunks)
    if len(refs) == 1:  # one image: no date needed
        ref = open_raster(refs[0], what="the reference", chunks=args.chunks)
        mask = open_mask(masks[0], chunks=args.chunks) if masks else None
        return src, ref, mask
    ref = open_series(refs, dates=args.ref_dates, what="the reference", chunks=args.chunks)
    mask = open_mask_series(masks, ref, refs, chunks=args.chunks) if masks else None
    return src, ref, mask


def _date_options(args: argparse.Namespace) -> dict[str, Any]:
    """``fit``'s and ``evaluate``'s options for a reference time series."""
    return {"src_time": args.src_time, "dates": args.dates, "max_days": args.max_days}


def _cmd_fit(args: argparse.Namespace) -> int:
    # Before minutes of sampling and training: a model that cannot be written is refused now.
    check_destination(args.out)
    src, ref, mask = _open_pair(args)
    with _scheduler(None):
        model = xharmonise.fit(
            src,
            ref,
            method=args.method,
            variance=args.variance,
            mask=mask,
            bands=args.bands,
            scale=args.scale,
            offset=args.offset,
            iterations=args.iterations,
            patch_size=args.patch_size,
            test_fraction=args.test_fraction,
            max_patches=args.max_patches,
            seed=args.seed,
            device=args.device,
            progress=not args.quiet,
            coregister=args.coregister,
            **_date_options(args),
        )
    _echo(format_model_info(model))
    out = model.save(args.out)
    _echo(f"wrote {out}")
    return EXIT_OK


def _format_shifts(shifts: dict[str, tuple[float, float]]) -> str:
    return ", ".join(f"{name} ({e:+.2f}, {n:+.2f})" for name, (e, n) in shifts.items())


def _cmd_predict(args: argparse.Namespace) -> int:
    from xharmonise.errors import StoreExistsError

    model = xharmonise.load(args.model)
    src = open_raster(args.src, what="the source", chunks=args.chunks)
    t0 = time.perf_counter()
    with _scheduler(args.scheduler):
        out = xharmonise.predict(
            src,
            model,
            with_variance=args.variance,
            with_applicability=args.applicability,
            scale=args.scale,
            offset=args.offset,
        )
        try:
            xharmonise.to_zarr(
                out,
                args.out,
                mode="w" if args.overwrite else "w-",
                resume=args.resume,
                compressor=args.compressor,
                progress=not args.quiet,
            )
        except StoreExistsError as err:
            raise StoreExistsError(_cli_wording(str(err))) from None
    shape = " x ".join(map(str, out["prediction"].shape))
    _echo(
        f"wrote {args.out}: {', '.join(map(str, out.data_vars))} ({shape}) in "
        f"{time.perf_counter() - t0:.1f} s"
    )
    return EXIT_OK


def _cmd_evaluate(args: argparse.Namespace) -> int:
    out = _table_destination(args)
    model = xharmonise.load(args.model)
    src, ref, mask = _open_pair(args)
    with _scheduler(None):
        scores = xharmonise.evaluate(
            src,
            ref,
            model,
            mask=mask,
            bands=args.bands,
            scale=args.scale,
            offset=args.offset,
            split=args.split,
            patch_size=args.patch_size,
            test_fraction=args.test_fraction,
            max_patches=args.max_patches,
            seed=args.seed,
            coregister=args.coregister,
            **_date_options(args),
        )
    _echo(repr(model))
    _echo(format_evaluation(scores))
    if out is not None:
        _write_evaluation(scores, out)
        _echo(f"wrote {out}")
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from xharmonise.plot import report, report_destination

    model = xharmonise.load(args.model)
    report_destination(args.out)
    src = prediction = None
    if args.src:
        src = open_raster(args.src, what="the source", chunks=args.chunks)
        # The report maps the applicability beside σ² when the model can measure it.
        prediction = xharmonise.predict(
            src,
            model,
            with_applicability=model.domain is not None,
            scale=args.scale,
            offset=args.offset,
        )
    with _scheduler(None):
        path = report(
            model,
            args.out,
            src=src,
            prediction=prediction,
            title=args.title,
            scale=args.scale,
            offset=args.offset,
        )
    _echo(f"wrote {path}")
    return EXIT_OK


def _cmd_info(args: argparse.Namespace) -> int:
    from xharmonise.store import describe

    if _is_model_file(args.store):
        _echo(format_model_info(xharmonise.load(args.store)))
        return EXIT_OK
    try:
        info = describe(args.store)
    except FileNotFoundError as err:
        raise InputError(f"{one_line(err)}: check the path or URL") from None
    _echo(format_store_info(info))
    return EXIT_OK


def _is_model_file(path: str) -> bool:
    # Stores are folders (locally) and named *.zarr; model files are single files.
    if path.rstrip("/").endswith(".safetensors"):
        return True
    return "://" not in path and Path(path).is_file()


def _cmd_demo(args: argparse.Namespace) -> int:
    from xharmonise.demo import run

    given = [n for n in ("src", "ref") if getattr(args, n)]
    if len(given) == 1:
        raise _usage(args, "--src and --ref go together: give both, or neither to simulate")
    if args.mask and not given:
        raise _usage(args, "--mask needs --src and --ref (the simulated pair has its own)")
    src = ref = mask = None
    if given:
        src = open_raster(args.src, what="the source", chunks=args.chunks)
        ref = open_raster(args.ref, what="the reference", chunks=args.chunks)
        mask = open_mask(args.mask, chunks=args.chunks) if args.mask else None
    run(
        args.out,
        src=src,
        ref=ref,
        mask=mask,
        size=args.size,
        method=args.method,
        variance=args.variance,
        iterations=args.iterations,
        patch_size=args.patch_size,
        seed=args.seed,
        chunks=args.chunks,
        progress=not args.quiet,
        echo=_echo,
    )
    return EXIT_OK


class _UsageError(Exception):
    pass


def _usage(args: argparse.Namespace, message: str) -> _UsageError:
    return _UsageError(f"{message} (see '{PROG} {args.command} --help')")


# --------------------------------------------------------------------------- parser
def _common() -> _Parser:
    # SUPPRESS: a subcommand's flag only overrides the top-level one when given, so
    # `xharmonise --quiet fit …` and `xharmonise fit --quiet …` both work.
    # A _Parser, as the subcommands are: typeshed wants parents of the subparsers' class
    # (argparse only copies their arguments).
    common = _Parser(add_help=False)
    common.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars"
    )
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the full traceback of errors",
    )
    return common


def _reference_argument(p: argparse.ArgumentParser, what: str) -> None:
    """REF of ``fit`` and ``evaluate``: one raster, or one per date of a time series."""
    p.add_argument(
        "ref",
        nargs="+",
        metavar="REF",
        help=f"{what}; several: one per date of a time series, each dated by --ref-dates, "
        "else its TIFFTAG_DATETIME tag, else a date in its file name (YYYYMMDD or "
        "YYYY-MM-DD); they must share grid, CRS and bands",
    )


def _series_options(p: argparse.ArgumentParser) -> None:
    """The masks and date options of ``fit`` and ``evaluate``."""
    p.add_argument(
        "--ref-dates",
        type=parse_dates,
        metavar="DATES",
        help="dates of the REF rasters, in their order: '2024-06-01,2024-06-11'",
    )
    p.add_argument(
        "--mask",
        action="append",
        metavar="RASTER",
        help="cloud mask on REF's grid, 1 = cloud; with several REF, one --mask per REF, "
        "in the same order",
    )
    p.add_argument(
        "--src-time",
        metavar="DATE",
        help="acquisition date of SRC, for several REF (default: its TIFFTAG_DATETIME tag)",
    )
    p.add_argument(
        "--dates",
        type=parse_date_policy,
        default="auto",
        metavar="POLICY",
        help="which REF dates to use: auto (the nearest while it has enough clear pixels, "
        "the next ones to fill it), nearest, all (within --max-days), or the dates "
        "('2024-06-11,2024-06-14'); default auto",
    )
    p.add_argument(
        "--max-days",
        type=_non_negative,
        default=DEFAULT_MAX_DAYS,
        metavar="DAYS",
        help=f"use no REF date further from SRC's (default {DEFAULT_MAX_DAYS:g})",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``xharmonise`` argument parser (subcommands fit, predict, evaluate, report, info,
    demo)."""
    parser = _Parser(
        prog=PROG,
        description=xharmonise.__doc__,
        epilog="Exit codes: 0 success, 1 error (bad or unreadable input), 2 usage error.",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = [_common()]
    chunks = _Parser(add_help=False)  # a _Parser for the reason given in _common
    chunks.add_argument(
        "--chunks",
        type=_positive,
        default=_CHUNK,
        metavar="PX",
        help=f"Dask chunk side for reading rasters, in pixels (default {_CHUNK})",
    )

    p = sub.add_parser(
        "fit",
        parents=[*common, chunks],
        help="learn a mapping from a source and a reference image",
        description="Learn a mapping that makes SRC reflectances consistent with REF (one "
        "raster, or one per date of a time series: the dates that serve SRC's are used); "
        "write the model file and print the test-split metrics.",
    )
    p.add_argument("src", metavar="SRC", help="high-resolution source raster (e.g. Pleiades, 2 m)")
    _reference_argument(p, "reference raster (e.g. Sentinel-2 L2A, 10 m)")
    p.add_argument(
        "--method", choices=list(METHODS), default="calibnet", help=_method_help("calibnet")
    )
    p.add_argument("--variance", action="store_true", help="add the variance head")
    p.add_argument(
        "--coregister",
        action="store_true",
        help="measure the source's shift (phase correlation) and correct it before fitting",
    )
    _series_options(p)
    p.add_argument(
        "--bands",
        type=parse_bands,
        metavar="PAIRS",
        help="band pairing, SRC=REF pairs ('B0=B2,B1=B3') or REF bands in SRC order",
    )
    p.add_argument(
        "--scale",
        type=parse_scale,
        metavar="S",
        help="DN scale of integer inputs without scale_factor: one value or SRC,REF",
    )
    p.add_argument(
        "--offset",
        type=parse_offset,
        metavar="O",
        help="reflectance offset (after scaling) of inputs without add_offset: one value or "
        "SRC,REF (S2 L2A from baseline 04.00: ,-0.1)",
    )
    p.add_argument("--iterations", type=_positive, help="training iterations (neural methods)")
    p.add_argument("--patch-size", type=_positive, default=32, metavar="PX", help="default 32")
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.1,
        metavar="F",
        help="share of patches held out for the test metrics (default 0.1)",
    )
    p.add_argument("--max-patches", type=_positive, metavar="N", help="use at most N patches")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument(
        "-o", "--out", default="model.safetensors", metavar="MODEL", help="model file to write"
    )
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser(
        "predict",
        parents=[*common, chunks],
        help="apply a model to a raster and write a Zarr store",
        description="Apply a fitted model to SRC at its own resolution, lazily, and write "
        "the prediction (and variance) to a sharded Zarr v3 store.",
    )
    p.add_argument("src", help="source raster to harmonise")
    p.add_argument("-m", "--model", required=True, help="model file written by `fit`")
    p.add_argument("-o", "--out", required=True, metavar="STORE", help="local path or URL")
    p.add_argument(
        "--scheduler", metavar="ADDRESS", help="Dask scheduler address (default: threads)"
    )
    how = p.add_mutually_exclusive_group()
    how.add_argument("--resume", action="store_true", help="finish an interrupted write")
    how.add_argument("--overwrite", action="store_true", help="replace an existing store")
    variance = p.add_mutually_exclusive_group()
    variance.add_argument(
        "--variance",
        action="store_true",
        default=None,
        help="write σ² for any model (default: only a model with a variance head)",
    )
    variance.add_argument(
        "--no-variance", dest="variance", action="store_false", default=None, help="leave σ² out"
    )
    p.add_argument(
        "--applicability",
        action="store_true",
        help="write the applicability (y, x): the share of training pixels at least as far "
        "from the training domain, below 0.001 outside it; warns when over 1%% of pixels are",
    )
    p.add_argument(
        "--compressor",
        choices=["zstd", "lz4"],
        default="zstd",
        help="zstd: the smaller store (default); lz4: Blosc lz4 after a byte shuffle, about "
        "2.4x faster to write and 2x to read, about 12%% larger",
    )
    p.add_argument("--scale", type=float, metavar="S", help="DN scale of an integer SRC")
    p.add_argument("--offset", type=float, metavar="O", help="reflectance offset of an integer SRC")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser(
        "evaluate",
        parents=[*common, chunks],
        help="score a model on another pair, as fit scores it",
        description="Score a fitted model on SRC and REF (another date, a neighbouring "
        "scene) with the sampling and metrics of `fit`, and print the metrics table and the "
        "coverage of σ²; --out also writes them as JSON or CSV.",
    )
    p.add_argument("src", metavar="SRC", help="high-resolution source raster")
    _reference_argument(p, "reference raster")
    p.add_argument("-m", "--model", required=True, help="model file written by `fit`")
    _series_options(p)
    p.add_argument(
        "--bands",
        type=parse_bands,
        metavar="PAIRS",
        help="band pairing as for fit (default: the model's, when the files name its bands)",
    )
    p.add_argument(
        "--scale",
        type=parse_scale,
        metavar="S",
        help="DN scale as for fit (default for an integer SRC: the model's training scale)",
    )
    p.add_argument(
        "--offset", type=parse_offset, metavar="O", help="reflectance offset, as for fit"
    )
    p.add_argument(
        "--split",
        choices=["all", "test"],
        default="all",
        help="all: every valid patch (default); test: fit's test split, which on the training "
        "pair gives back fit's table (the sampling options default to the model's)",
    )
    p.add_argument(
        "--patch-size", type=_positive, metavar="PX", help=f"default: the model's ({_FIT_SAMPLING})"
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        metavar="F",
        help="share held out by --split test; default: the model's",
    )
    p.add_argument(
        "--max-patches", type=_positive, metavar="N", help="score at most N; default: the model's"
    )
    p.add_argument(
        "--seed", type=int, help="seed of the patch order and split; default: the model's"
    )
    shift = p.add_mutually_exclusive_group()
    shift.add_argument(
        "--coregister",
        action="store_true",
        default=None,
        help="measure this pair's shift and correct it (default: the model's correction, if any)",
    )
    shift.add_argument(
        "--no-coregister",
        dest="coregister",
        action="store_false",
        default=None,
        help="no correction of the source",
    )
    p.add_argument("-o", "--out", metavar="TABLE", help="also write the scores: .json or .csv")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "report",
        parents=[*common, chunks],
        help="write a model's HTML report",
        description="Write an HTML report of a model (metrics, scatter plots, training "
        "curves, filters), with images of SRC and its prediction when --src is given.",
    )
    p.add_argument("model", help="model file written by `fit`")
    p.add_argument("-o", "--out", default="report.html", help="default report.html")
    p.add_argument("--src", help="source raster to show with its prediction")
    p.add_argument("--scale", type=float, metavar="S", help="DN scale of an integer SRC")
    p.add_argument("--offset", type=float, metavar="O", help="reflectance offset of an integer SRC")
    p.add_argument("--title")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser(
        "info",
        parents=common,
        help="describe a Zarr store written by `predict`, or a model file",
        description="Print the variables, shape, chunks and shards, CRS, transform, bands, "
        "method and provenance of a store (local path or fsspec URL); or, for a model "
        "file (*.safetensors), the model, its test metrics and, when it was fitted on a "
        "reference time series, its dates and held-out RMSE per date.",
    )
    p.add_argument("store", help="local path or URL (s3://…, file://…) of a store or model")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser(
        "demo",
        parents=common,
        help="the main job: simulate (or read) a pair, fit, predict, report",
        description="Simulate a top-of-atmosphere Pleiades / Sentinel-2 pair with "
        "unmasked source clouds and a mis-registration (or read --src/--ref), fit BCNet "
        "with the variance head, print the metrics, and write OUT/harmonised.zarr, "
        "OUT/model.safetensors and OUT/report.html.",
    )
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--src", help="source raster instead of the simulated one")
    p.add_argument("--ref", help="reference raster instead of the simulated one")
    p.add_argument("--mask", metavar="RASTER", help="cloud mask on REF's grid, 1 = cloud")
    p.add_argument(
        "--size", type=_positive, default=2000, metavar="PX", help="simulated source side"
    )
    p.add_argument("--method", choices=list(METHODS), default="bcnet", help=_method_help("bcnet"))
    p.add_argument(
        "--variance",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="variance head (default: on for the methods that offer one)",
    )
    p.add_argument("--iterations", type=_positive, help="training budget (default: the CPU one)")
    p.add_argument("--patch-size", type=_positive, default=32, metavar="PX", help="default 32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunks", type=_positive, default=1024, metavar="PX", help="default 1024")
    p.set_defaults(func=_cmd_demo)
    return parser


def _version() -> str:
    return f"{PROG} {xharmonise.__version__}"


@contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Show warnings as ``xharmonise: warning: …`` lines instead of file:line + source."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"{PROG}: warning: {one_line(message)}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``xharmonise`` command line; returns the exit code.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        0 success, 1 error, 2 usage error.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version and usage errors end here
        return int(stop.code or 0) if isinstance(stop.code, int | None) else EXIT_USAGE
    try:
        with _one_line_warnings():
            return int(args.func(args))
    except _UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # The reader went away (`xharmonise info … | head`): end quietly like other
        # tools, and keep Python from complaining again while flushing stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:
        if args.debug:
            raise
        # A store is never left looking complete: its finished regions are kept.
        hint = " (rerun with --resume to finish the store)" if args.command == "predict" else ""
        print(f"{PROG}: error: interrupted{hint}", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        print(f"{PROG}: error: {_describe(err)}", file=sys.stderr)
        return EXIT_ERROR


def _describe(err: Exception) -> str:
    """One line for an error: the message of expected ones, the type too for the rest."""
    import rasterio.errors

    from xharmonise.errors import HarmoniseError

    if isinstance(err, HarmoniseError):
        return one_line(err)
    if isinstance(err, rasterio.errors.RasterioError | OSError):
        # Raised while Dask reads or writes blocks: a file went missing, a disk filled up.
        return f"{type(err).__name__}: {one_line(err)}"
    return (
        f"unexpected {type(err).__name__}: {one_line(err)} (rerun with --debug for the "
        "traceback, and please report it)"
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
