"""Headless Chromium (Debian's ``chromium-headless-shell`` or ``chromium``) for
looking at an HTML report the way a user does: did every plot draw, did the
page log an error.

The page gets a small probe script: it records errors (``window.onerror``,
``console.error``) and, once the page has loaded, writes what each plotly
plot drew into the DOM, which ``--dump-dom`` prints.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

NAMES = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")

PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message)));
const __ce = console.error;
console.error = (...a) => { window.__errors.push(a.map(String).join(" ")); __ce(...a); };
window.addEventListener("load", () => setTimeout(() => {
  const plots = [...document.querySelectorAll(".plotly-graph-div")].map(p => {
    const svg = p.querySelector("svg.main-svg");
    const r = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
    return {id: p.id, width: r.width, height: r.height,
            marks: p.querySelectorAll(".point, .bars path, .scatterlayer path.js-line").length};
  });
  const out = document.createElement("pre");
  out.id = "__check";
  out.textContent = JSON.stringify({errors: window.__errors, plots});
  document.body.appendChild(out);
}, 300));
</script>"""


def chromium() -> str | None:
    """The browser's path: ``MERGEOPT_TEST_CHROMIUM`` or the first on PATH."""
    given = os.environ.get("MERGEOPT_TEST_CHROMIUM")
    if given:
        return given
    return next((p for n in NAMES if (p := shutil.which(n))), None)


def _run(browser: str, page: Path, *args: str) -> str:
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--hide-scrollbars",
        "--virtual-time-budget=15000",
        *args,
        page.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{browser} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout


def check_page(page: Path, browser: str) -> dict:
    """Render ``page`` and return ``{"errors": [...], "plots": [{id, width,
    height, marks}]}`` as the browser saw it."""
    with tempfile.TemporaryDirectory() as tmp:
        probed = Path(tmp) / page.name
        text = page.read_text()
        probed.write_text(text.replace("<head>", "<head>" + PROBE, 1))
        dom = _run(browser, probed, "--dump-dom")
    found = re.search(r'<pre id="__check">(.*?)</pre>', dom, re.S)
    if not found:
        raise RuntimeError("the probe never ran: the page did not finish loading")
    import html

    return json.loads(html.unescape(found.group(1)))


def screenshot(page: Path, png: Path, browser: str, size: str = "1280,4000") -> Path:
    """A full-width PNG of ``page`` (the window ``size``, width,height)."""
    png.parent.mkdir(parents=True, exist_ok=True)
    _run(browser, page, f"--screenshot={png.resolve()}", f"--window-size={size}")
    return png
