"""Render a generated HTML page in headless Chromium, as a person would see it.

`check_page(html_path)` loads a copy of the page with a small probe script injected first, lets
the page's JavaScript run, and returns {errors: [...], figures: [{id, traces, drawn, title}]}:
uncaught errors and console.error calls, and per plotly figure how many traces it has and how
many were actually drawn as SVG. `screenshot(html_path, png_path)` saves what the page looks like.

Chromium: Debian's `chromium` package (`make test` installs it where missing). `find_chromium()`
returns None where there is none, and the tests skip with that message.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--disable-dev-shm-usage",
    "--mute-audio",
)
NO_BROWSER = (
    "no Chromium found (install Debian's `chromium` package: apt-get install -y chromium; "
    "`make test` does this where it can)"
)

PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push('uncaught: ' + e.message));
window.addEventListener('unhandledrejection', e => window.__errors.push('rejection: ' + e.reason));
(function () {
  const orig = console.error;
  console.error = function (...a) { window.__errors.push('console.error: ' + a.join(' '));\
 orig.apply(console, a); };
})();
window.addEventListener('load', () => setTimeout(() => {
  const figs = [...document.querySelectorAll('.plotly-graph-div')].map(gd => ({
    id: gd.id,
    traces: (gd._fullData || []).length,
    drawn: [...gd.querySelectorAll('.scatterlayer .trace, .barlayer .trace')].filter(
      g => [...g.querySelectorAll('path')].some(p => \
(p.getAttribute('d') || '').length > 4)).length,
    title: ((gd._fullLayout || {}).title || {}).text || ''}));
  const pre = document.createElement('pre');
  pre.id = '__probe';
  pre.textContent = JSON.stringify({errors: window.__errors, figures: figs});
  document.body.appendChild(pre);
}, 1000));
</script>"""


def find_chromium() -> str | None:
    for name in (
        os.environ.get("SPECMOE_CHROMIUM"),
        "chromium",
        "chromium-browser",
        "google-chrome",
    ):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    exe = find_chromium()
    if exe is None:
        raise RuntimeError(NO_BROWSER)
    with tempfile.TemporaryDirectory(prefix="specmoe-chromium-") as profile:
        return subprocess.run(
            [exe, *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def check_page(page: str | Path) -> dict:
    """Errors and per-figure drawing counts of a page after its scripts ran."""
    text = Path(page).read_text(encoding="utf-8")
    probed = text.replace("<head>", "<head>" + PROBE, 1) if "<head>" in text else PROBE + text
    with tempfile.TemporaryDirectory(prefix="specmoe-page-") as d:
        copy = Path(d) / "page.html"
        copy.write_text(probed, encoding="utf-8")
        proc = _run(["--virtual-time-budget=20000", "--dump-dom", copy.as_uri()])
    m = re.search(r'<pre id="__probe">(.*?)</pre>', proc.stdout, re.DOTALL)
    if m is None:
        return {
            "errors": [
                f"probe did not report (chromium exit {proc.returncode}): {proc.stderr[-500:]}"
            ],
            "figures": [],
        }
    return json.loads(html.unescape(m.group(1)))


def screenshot(
    page: str | Path, png: str | Path, width: int = 1280, height: int = 1300, offset: int = 0
) -> Path:
    """What the page looks like in a width × height window scrolled down by `offset` pixels (the
    command line cannot scroll: a copy of the page is shifted up by `offset` instead)."""
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    text = Path(page).read_text(encoding="utf-8")
    shift = f"<style>body{{position:relative;top:-{offset}px}}</style>" if offset else ""
    with tempfile.TemporaryDirectory(prefix="specmoe-page-") as d:
        copy = Path(d) / "page.html"
        copy.write_text(text.replace("<head>", "<head>" + shift, 1), encoding="utf-8")
        _run(
            [
                "--virtual-time-budget=20000",
                f"--window-size={width},{height}",
                f"--screenshot={png}",
                copy.as_uri(),
            ]
        )
    return png


def screenshots(
    page: str | Path, stem: str | Path, pages: int = 4, width: int = 1280, height: int = 1300
) -> list[Path]:
    """`pages` window-sized screenshots down the page: stem-0.png, stem-1.png, ..."""
    return [screenshot(page, f"{stem}-{i}.png", width, height, i * height) for i in range(pages)]
