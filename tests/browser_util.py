"""Drive a real headless Chromium over dashboard pages: texts, console errors, chart data, screenshots.

Shared by tests/test_dashboard_browser.py (synthetic ledger) and end-to-end tests against a real
swarm, which only need a URL list:

    with serve_dashboard(workdir) as base:
        visits = visit_pages([base + "/", base + "/contributors"], screenshot_dir=tmp_path)
    assert all(not v.console_errors for v in visits)

Uses Debian's /usr/bin/chromium through Playwright (`pip install playwright`, whose wheel ships the
driver; never `playwright install`). Console errors include CSP violations, which Chromium reports
as console errors ("Refused to ..."), so a clean visit means the CSP held without breaking the page.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cairn.peer.swarm import cairn, free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO_ROOT = Path(__file__).resolve().parents[1]

_CHART_POINTS_JS = """() => Array.from(document.querySelectorAll('svg.chart-svg polyline'))
    .map(line => (line.getAttribute('points') || '').trim().split(/\\s+/).filter(Boolean).length)"""
_REFERENCES_JS = """() => Array.from(document.querySelectorAll('svg.chart-svg text.reference-label')).map(t => t.textContent)"""
_BADGES_JS = """() => Array.from(document.querySelectorAll('.badge')).map(b => b.textContent.trim())"""
_LIVE_DOT_JS = """() => { const dot = document.querySelector('.live-dot'); return dot ? dot.getAttribute('class') : null; }"""


@dataclass
class PageVisit:
    url: str
    status: int | None
    title: str
    text: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    chart_points: list[int] = field(default_factory=list)
    """Number of points of every chart polyline on the page, in document order."""
    references: list[str] = field(default_factory=list)
    """Labels of the charts' reference lines (a loss's chance level), in document order."""
    badges: list[str] = field(default_factory=list)
    """Text of every badge on the page, after any live refresh."""
    live_dot: str | None = None
    """The class attribute of the swarm page's status dot, after any live refresh."""
    live_update: bool | None = None
    """With `wait_for_api`: whether the page fetched that API by itself (the live refresh) in time."""
    screenshot: Path | None = None

    @property
    def problems(self) -> list[str]:
        return self.console_errors + self.page_errors + self.failed_requests


def chromium_available() -> bool:
    return os.access(CHROMIUM, os.X_OK)


def screenshot_name(url: str) -> str:
    path = url.split("://", 1)[-1].split("/", 1)[-1].split("?", 1)[0].strip("/")
    return (re.sub(r"[^A-Za-z0-9]+", "_", path) or "swarm") + ".png"


def visit_pages(
    urls: Sequence[str],
    *,
    screenshot_dir: Path | None = None,
    viewport: tuple[int, int] = (1280, 900),
    wait_for_api: str | None = None,
    timeout_ms: int = 20000,
    screenshot_prefix: str = "",
) -> list[PageVisit]:
    """Open each URL in one headless Chromium, wait for the network to settle, and report.

    With `wait_for_api` (say "/api/swarm"), pages that poll it are also watched until they fetch it
    once on their own, which proves the live refresh runs under the page's CSP.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    visits = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
            for url in urls:
                page = context.new_page()
                page.set_default_timeout(timeout_ms)
                visit = PageVisit(url=url, status=None, title="", text="")
                page.on("console", lambda m, v=visit: v.console_errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e, v=visit: v.page_errors.append(str(e)))
                page.on("requestfailed", lambda r, v=visit: v.failed_requests.append(f"{r.url}: {r.failure}"))
                response = page.goto(url, wait_until="networkidle")
                visit.status = response.status if response is not None else None
                visit.title = page.title()
                visit.text = page.inner_text("body")
                visit.chart_points = page.evaluate(_CHART_POINTS_JS)
                if wait_for_api and page.query_selector(f'main[data-live="{wait_for_api}"]'):
                    try:
                        with page.expect_response(lambda r: wait_for_api in r.url and r.status == 200, timeout=timeout_ms):
                            pass
                        page.wait_for_timeout(500)  # let the page apply what it fetched
                        visit.live_update = True
                        visit.text = page.inner_text("body")  # the text as the live refresh left it
                    except PlaywrightTimeout:
                        visit.live_update = False
                visit.references = page.evaluate(_REFERENCES_JS)
                visit.badges = page.evaluate(_BADGES_JS)
                visit.live_dot = page.evaluate(_LIVE_DOT_JS)
                if screenshot_dir is not None:
                    Path(screenshot_dir).mkdir(parents=True, exist_ok=True)
                    visit.screenshot = Path(screenshot_dir) / (screenshot_prefix + screenshot_name(url))
                    page.screenshot(path=str(visit.screenshot), full_page=True)
                page.close()
                visits.append(visit)
        finally:
            browser.close()
    return visits


@contextmanager
def serve_dashboard(workdir: Path, *, extra_args: Sequence[str] = (), startup_timeout: float = 60.0) -> Iterator[str]:
    """Run `cairn dashboard serve --workdir DIR` on a free 127.0.0.1 port; yields the base URL."""
    with dashboard_process(workdir, extra_args=extra_args, startup_timeout=startup_timeout) as (base, _):
        yield base


@contextmanager
def dashboard_process(
    workdir: Path, *, extra_args: Sequence[str] = (), startup_timeout: float = 60.0
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Like serve_dashboard, also yielding the server process (for its pid, say)."""
    port = free_port()
    command = cairn("dashboard", "serve", "--workdir", str(workdir), "--port", str(port), *extra_args)
    base = f"http://127.0.0.1:{port}"
    # output to a file, not a pipe: a chatty server never blocks on it
    with tempfile.TemporaryFile(mode="w+") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + startup_timeout
            while True:
                if process.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"dashboard exited with {process.returncode}: {log.read()[-2000:]}")
                try:
                    with urllib.request.urlopen(base + "/api/swarm", timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"dashboard did not answer on {base} within {startup_timeout:.0f} s")
                time.sleep(0.2)
            yield base, process
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
