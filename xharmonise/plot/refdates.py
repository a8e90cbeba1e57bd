"""The report's "Reference dates" section: which Sentinel-2 dates a model was fitted on.

Only a model fitted on a reference time series has one (its ``fit_report.dates`` is
empty otherwise): the source date, the policy and window that chose the dates, each
candidate date with its clear pixels and what it gave to training, and the held-out
RMSE per date.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import numpy as np

from xharmonise.dates import AUTO_MIN_PATCHES
from xharmonise.plot.figures import shown_stages

if TYPE_CHECKING:
    from xharmonise.harmoniser import Harmoniser

__all__ = ["dates_section", "has_dates"]

_POLICIES = {
    "auto": "auto: the nearest date, and the next ones only while fewer than "
    f"{AUTO_MIN_PATCHES} patches' worth of reference pixels are clear",
    "nearest": "nearest: the nearest date only",
    "all": "all: every date within the window",
    "explicit": "explicit: the dates given to fit",
}


def has_dates(model: Harmoniser) -> bool:
    """Whether ``model`` was fitted on a reference time series."""
    return bool(model.fit_report.dates)


def _window(record: dict[str, Any]) -> str:
    if record.get("policy") == "explicit":
        return "none: the dates were given"
    max_days = record.get("max_days")
    return "?" if max_days is None else f"±{float(max_days):g} days of the source date"


def _summary_rows(record: dict[str, Any]) -> list[tuple[str, str]]:
    policy = str(record.get("policy", "?"))
    candidates, used = record.get("candidates", []), record.get("used", [])
    return [
        ("source date", str(record.get("source", "?"))),
        ("policy", _POLICIES.get(policy, policy)),
        ("window", _window(record)),
        ("dates used", f"{len(used)} of {len(candidates)} candidates, nearest first"),
    ]


def _kv(rows: list[tuple[str, str]]) -> str:
    cells = "".join(
        f"<tr><td class='k'>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows
    )
    return f"<table class='kv'>{cells}</table>"


def _candidates_table(record: dict[str, Any]) -> str:
    used = list(record.get("used", []))
    pixels, patches = record.get("train_pixels", {}), record.get("train_patches", {})
    head = (
        "<tr><th class='k'>date</th><th>days from the source</th><th>clear pixels</th>"
        "<th class='k'>used</th><th>training pixels</th><th>training patches</th></tr>"
    )
    rows = []
    for c in record.get("candidates", []):
        date = str(c.get("date", "?"))
        taken = date in used
        cells = [
            f"<td class='k'>{html.escape(date)}</td>",
            f"<td>{float(c.get('days', np.nan)):+.1f}</td>",
            f"<td>{int(c.get('clear_pixels', 0))}</td>",
            f"<td class='k'>{f'yes ({used.index(date) + 1})' if taken else 'no'}</td>",
            f"<td>{pixels.get(date, '–') if taken else '–'}</td>",
            f"<td>{patches.get(date, '–') if taken else '–'}</td>",
        ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table class='dates'><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _rmse_table(model: Harmoniser) -> str:
    table = model.fit_report.date_metrics
    assert table is not None
    stages = [s for s in shown_stages(model) if s != "initial"]
    days = {str(c.get("date")): c.get("days") for c in model.fit_report.dates.get("candidates", [])}
    dates = [str(d) for d in table["date"].values]

    def label(d: str) -> str:
        offset = days.get(d)
        return d if offset is None else f"{d} ({float(offset):+.1f} d)"

    head1 = "<th class='k' rowspan='2'>band</th>" + "".join(
        f"<th colspan='{len(stages)}'>{html.escape(label(d))}</th>" for d in dates
    )
    head2 = "".join(f"<th>{html.escape(s)}</th>" for _ in dates for s in stages)
    rmse = table.sel(metric="rmse")
    rows = []
    for band in table["band"].values:
        cells = [f"<td class='k'>{html.escape(str(band))}</td>"]
        for d in dates:
            for s in stages:
                v = float(rmse.sel(band=band, stage=s, date=d))
                cells.append(f"<td>{'–' if np.isnan(v) else f'{v:.4f}'}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f"<table class='date-rmse'><thead><tr>{head1}</tr><tr>{head2}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def dates_section(model: Harmoniser) -> str:
    """The HTML of the section (from its ``<h2>``), or ``""`` for a single-date model."""
    if not has_dates(model):
        return ""
    record = model.fit_report.dates
    parts = [
        "<h2 id='dates'>Reference dates</h2>",
        "<p>The reference was a Sentinel-2 time series: each reference pixel was taken "
        "from the nearest of the dates used where it is clear.</p>",
        _kv(_summary_rows(record)),
        "<p>Candidate dates, nearest first: clear pixels of the reference under the "
        "source, and what each date used gave to training (its pixels, and the patches "
        "holding one of them at least).</p>",
        _candidates_table(record),
    ]
    if model.fit_report.date_metrics is not None:
        parts += [
            "<p>Held-out RMSE per date used, reflectance units, on the test patches' "
            "pixels taken from that date (– where the test split has none from it).</p>",
            _rmse_table(model),
        ]
    return "\n".join(parts)
