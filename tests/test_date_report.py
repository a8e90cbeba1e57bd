"""A model fitted on a reference time series shows its dates: in the HTML report, in
``format_dates`` (the command line's text, run as a command in test_cli.py), and after a
save / load round trip. A single-date model shows nothing of the kind."""

from __future__ import annotations

import re

import numpy as np
import pytest

import xharmonise
from xharmonise import plot
from xharmonise.cli import format_dates
from xharmonise.simulate import simulate_pair, simulate_series


@pytest.fixture(scope="module")
def dated():
    # The nearest date (-1 d) is 90 % cloudy: "auto" takes the next one (+3 d) to fill,
    # and the test split holds pixels of the second date only (NaN metrics for the first).
    # A neural method, so that the report has both a linear and a model column; two
    # iterations are enough, the report shows whatever was learned.
    s = simulate_series((400, 400), seed=0, days=(-9, -1, 3), ref_clouds=[0.1, 0.9, 0.1])
    return xharmonise.fit(
        s.src, s.ref, method="calibnet", iterations=2, mask=s.mask, patch_size=16, progress=False
    )


@pytest.fixture(scope="module")
def single():
    p = simulate_pair((200, 200), seed=0)
    return xharmonise.fit(p.src, p.ref, method="linear", patch_size=8, progress=False)


def test_the_fixture_has_what_the_tests_need(dated):
    record, table = dated.fit_report.dates, dated.fit_report.date_metrics
    assert record["policy"] == "auto" and len(record["used"]) == 2
    assert len(record["candidates"]) == 3  # one candidate left unused
    rmse = table.sel(metric="rmse")
    assert rmse.isnull().any() and rmse.notnull().any()


def _section(text: str) -> str:
    start = text.index("<h2 id='dates'>")
    return text[start : text.index("<h2", start + 1)]


def test_report_shows_the_reference_dates(tmp_path, dated):
    out = plot.report(dated, tmp_path / "dated.html")
    text = out.read_text(encoding="utf-8")
    assert "<a href='#dates'>" in text
    section = _section(text)
    record = dated.fit_report.dates
    assert "Reference dates" in section
    assert f"<td>{record['source']}</td>" in section
    assert "auto: the nearest date" in section and "±30 days of the source date" in section
    assert "2 of 3 candidates" in section
    # One row per candidate: date, days, clear pixels, used (with its rank), training
    # pixels and patches (dashes for a date not used).
    for c in record["candidates"]:
        date = c["date"]
        if date in record["used"]:
            used = f"yes ({record['used'].index(date) + 1})"
            gave = (
                f"<td>{record['train_pixels'][date]}</td><td>{record['train_patches'][date]}</td>"
            )
        else:
            used, gave = "no", "<td>–</td><td>–</td>"
        row = (
            f"<tr><td class='k'>{date}</td><td>{c['days']:+.1f}</td>"
            f"<td>{c['clear_pixels']}</td><td class='k'>{used}</td>{gave}</tr>"
        )
        assert row in section, row
    # The per-date RMSE table: band x date, linear and model, 4 decimals, – for NaN.
    table = dated.fit_report.date_metrics.sel(metric="rmse")
    dates = [str(d) for d in table["date"].values]
    assert re.search(r"<th>linear</th><th>model</th>" * len(dates), section)
    for band in dated.ref_bands:
        values = [
            float(table.sel(band=band, date=d, stage=s)) for d in dates for s in ("linear", "model")
        ]
        cells = "".join("<td>–</td>" if np.isnan(v) else f"<td>{v:.4f}</td>" for v in values)
        assert f"<tr><td class='k'>{band}</td>{cells}</tr>" in section
    # Still self-contained: the section adds no link, script or remote reference.
    assert not re.search(r"https?:|<script|<link", section)


def test_single_date_report_has_no_dates_section(tmp_path, single):
    assert single.fit_report.dates == {} and single.fit_report.date_metrics is None
    text = plot.report(single, tmp_path / "single.html").read_text(encoding="utf-8")
    assert "id='dates'" not in text and "#dates" not in text
    assert "Reference dates" not in text
    assert format_dates(single) == ""


def test_format_dates_prints_the_dates_used_and_rmse_per_date(dated):
    text = format_dates(dated)
    record = dated.fit_report.dates
    lines = text.splitlines()
    assert lines[0] == (
        f"reference dates: source {record['source']}, policy auto within ±30 days; 2 of 3 used"
    )
    for c in record["candidates"]:
        row = next(line.split() for line in lines if line.startswith(c["date"]))
        if c["date"] in record["used"]:
            expected = [
                str(record["used"].index(c["date"]) + 1),
                str(record["train_pixels"][c["date"]]),
                str(record["train_patches"][c["date"]]),
            ]
        else:
            expected = ["-", "-", "-"]
        assert row == [c["date"], f"{c['days']:+.1f}", str(c["clear_pixels"]), *expected]
    table = dated.fit_report.date_metrics.sel(metric="rmse")
    rows = {
        tuple(line.split()[:2]): line.split()[2:] for line in lines if re.match(r"^B\d\s", line)
    }
    assert len(rows) == 2 * len(dated.ref_bands)
    for (band, stage), cells in rows.items():
        values = table.sel(band=band, stage=stage).values
        assert cells == ["-" if np.isnan(v) else f"{v:.4f}" for v in values]


def test_save_load_keeps_dates_and_date_metrics(tmp_path, dated):
    loaded = xharmonise.load(dated.save(tmp_path / "dated.safetensors"))
    assert loaded.fit_report.dates == dated.fit_report.dates
    # NaN for the date without test pixels compares equal too.
    assert loaded.fit_report.date_metrics.identical(dated.fit_report.date_metrics)
    assert format_dates(loaded) == format_dates(dated)
