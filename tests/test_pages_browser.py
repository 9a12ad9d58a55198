"""Every generated page, rendered in headless Chromium as a person sees it: no JavaScript errors,
no empty figure, the words the page promises, and a screenshot of each (in the test's tmp folder,
or in $SPECMOE_SCREENSHOTS when set, to look at). Skips with a message where there is no
Chromium."""

import os
from pathlib import Path

import pytest

from specmoe.app import report
from specmoe.app.cli.main import main
from specmoe.measure.trace import event, write_trace
from specmoe.planning.sweep import run_sweep

browser = pytest.importorskip("browser")  # tests/browser.py
pytestmark = pytest.mark.skipif(browser.find_chromium() is None, reason=browser.NO_BROWSER)

GRID = {
    "name": "pages",
    "axes": {
        "model": ["mixtral-8x7b", "nllb-moe-54b"],
        "hardware": ["h100-pcie"],
        "policy": ["ondemand", "overlap", "caching", "specmoe"],
        "batch": [1, 8, 64, 512],
        "gamma": [0, 2, 4],
        "draft_experts": [1, 2],
        "alpha": ["paper"],
    },
}


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    d = os.environ.get("SPECMOE_SCREENSHOTS")
    return Path(d) if d else tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    d = tmp_path_factory.mktemp("pages")
    assert (
        main(["plan", "--confirm", "analytic", "--max-gamma", "8", "--html", str(d / "plan.html")])
        == 0
    )
    events = []
    for i in range(40):
        events.append(
            event("attention", "attn", ts_us=i * 10.0, dur_us=6.0, stream="gpu", layer=i % 4)
        )
        events.append(
            event("expert h2d", "h2d", ts_us=i * 10.0 + 1, dur_us=8.0, stream="h2d", bytes=1e6)
        )
    trace = write_trace(
        d / "t.jsonl",
        {"source": "sim", "model": "mixtral-8x7b", "policy": {"name": "specmoe"}},
        events,
    )
    table = run_sweep(GRID, backend="serial", progress=False)
    report.write_report(table, d / "report.html", trace=trace, title="specmoe report: test")
    from test_calibrate import (  # synthetic microbenchmark traces of known parameters
        _events,
        _write,
    )

    micro = _write(d / "micro.jsonl.gz", _events(), noise=0.01)
    assert (
        main(
            [
                "calibrate",
                str(micro),
                "--hardware",
                "h100-pcie",
                "-o",
                str(d / "cal.yaml"),
                "--html",
                str(d / "calibration.html"),
            ]
        )
        == 0
    )
    return {
        "plan": d / "plan.html",
        "report": d / "report.html",
        "calibration": d / "calibration.html",
    }


@pytest.mark.parametrize(
    "name, words",
    [
        (
            "plan",
            ["Recommendation", "not calibrated", "Acceptance α", "Speculation", "What limits it"],
        ),
        (
            "report",
            [
                "not calibrated",
                "published acceptance",
                "does not fit in GPU memory",
                "kind of work",
            ],
        ),
        ("calibration", ["hold-out MAPE", "parameter"]),
    ],
)
def test_page_renders_without_errors_and_every_figure_is_drawn(pages, shots, name, words):
    result = browser.check_page(pages[name])
    assert result["errors"] == [], result["errors"]
    assert result["figures"], "no plotly figure on the page"
    empty = [f["title"] for f in result["figures"] if f["traces"] == 0 or f["drawn"] == 0]
    assert not empty, f"empty figures: {empty}"
    text = pages[name].read_text()
    missing = [w for w in words if w not in text]
    assert not missing, missing
    first, _ = browser.screenshots(pages[name], shots / name, pages=2)
    assert first.stat().st_size > 10_000  # a blank window compresses to far less


def test_a_broken_page_is_caught(tmp_path):
    """The probe sees a JavaScript error and an empty figure (so the test above can fail)."""
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>"
        "<div class='plotly-graph-div' id='x'></div><script>undefinedFunction();</script>"
        "</body></html>"
    )
    result = browser.check_page(page)
    assert any("undefinedFunction" in e for e in result["errors"])
    assert result["figures"] and result["figures"][0]["drawn"] == 0


def test_png_export_through_kaleido(tmp_path):
    pytest.importorskip("kaleido", reason="kaleido not installed (pip install 'specmoe[png]')")
    fig = report.throughput_vs_batch(
        run_sweep(GRID, backend="serial", progress=False), "mixtral-8x7b", "h100-pcie"
    )
    paths, note = report.export_png({"throughput": fig}, tmp_path / "png")
    assert note == "" and len(paths) == 1
    data = Path(paths[0]).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
