"""The dashboard in a real headless Chromium: `cairn dashboard serve` over a synthetic ledger.

Checks what only a browser can: the pages render under the strict CSP with no console error (a CSP
violation is a console error), the charts are drawn with data, the swarm page refreshes itself from
the JSON API, and hostile display names stay text. Screenshots go to the test's tmp dir, or to
$CAIRN_SCREENSHOTS if set (CAIRN_SCREENSHOTS=docs refreshes docs/dashboard-*.png).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from browser_util import chromium_available, serve_dashboard, visit_pages

from cairn.coordinator.publishing.repository import ReleaseRepository
from cairn.dashboard.synthetic import HOSTILE_NAMES, build_workdir, default_peers

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not chromium_available(), reason="/usr/bin/chromium is not installed"),
]
pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright; no browser download needed)")

PAGES = ["/", "/contributors", "/contributors/0000000000000002", "/convergence", "/releases", "/landmarks"]


def test_pages_in_chromium(tmp_path):
    workdir = tmp_path / "coordinator"
    # 'now' a little ahead, so the synthetic peers still count as online while the browser works
    build_workdir(workdir, now=time.time() + 5, peers=default_peers(5), publisher=ReleaseRepository(workdir))
    shots = Path(os.environ.get("CAIRN_SCREENSHOTS") or tmp_path / "screenshots")
    with serve_dashboard(workdir) as base:
        visits = visit_pages(
            [base + path for path in PAGES], screenshot_dir=shots, wait_for_api="/api/swarm", screenshot_prefix="dashboard-"
        )
    by_path = dict(zip(PAGES, visits))

    for path, visit in by_path.items():
        assert visit.status == 200, path
        assert visit.problems == [], f"{path}: {visit.problems}"
        assert visit.screenshot is not None and visit.screenshot.stat().st_size > 10_000

    swarm = by_path["/"]
    assert swarm.live_update is True, "the swarm page did not poll /api/swarm"
    # the text after the live refresh rebuilt the peers table: names still there, as text
    assert "alice-laptop" in swarm.text and all(name in swarm.text for name in HOSTILE_NAMES)
    assert "No peer is online" not in swarm.text

    board = by_path["/contributors"].text
    rows = [line for line in board.splitlines() if "\t" in line and line.split("\t")[0].strip().isdigit()]
    assert len(rows) == 6, board  # five online peers and one offline
    assert all(int(row.split("\t")[3].replace(",", "")) > 0 for row in rows), "every listed peer has credited samples"

    assert all(points > 50 for points in by_path["/"].chart_points) and len(by_path["/"].chart_points) == 2
    assert len(by_path["/contributors/0000000000000002"].chart_points) == 4
    convergence = by_path["/convergence"].chart_points
    assert len(convergence) >= 10 and convergence[0] > 100
    assert "v2" in by_path["/landmarks"].text and "+8 appended to v1" in by_path["/landmarks"].text
    assert "cairn release verify ./cairn-0.2.0" in by_path["/releases"].text


def test_a_run_at_chance_does_not_look_healthy_in_chromium(tmp_path):
    """Issue 18: the chance line ln(batch) on the loss charts, lines broken at the gap between two runs, the collapsed
    peer marked (also after the page's live refresh rebuilt the table), the green dot only while training, and no
    "met" Matryoshka badge for a release whose full vector is at chance."""
    workdir = tmp_path / "coordinator"
    build_workdir(
        workdir,
        now=time.time() + 5,
        peers=default_peers(3),
        publisher=ReleaseRepository(workdir),
        at_chance=True,
        gap=(0.4, 0.6),
        collapsed=frozenset({"0000000000000001"}),
    )
    with serve_dashboard(workdir) as base:
        swarm, convergence = visit_pages([base + "/", base + "/convergence"], wait_for_api="/api/swarm")
    for visit in (swarm, convergence):
        assert visit.status == 200 and visit.problems == [], visit.problems
    assert swarm.live_update is True
    assert "collapsed" in swarm.text  # rendered by dashboard.js after the refresh
    assert len(swarm.chart_points) == 4, swarm.chart_points  # speed and loss, each in two pieces around the gap
    assert swarm.references == ["chance: ln 32 = 3.47"] and swarm.live_dot == "live-dot"
    assert convergence.references == ["chance: ln 32 = 3.47"] * 2
    assert "met" not in convergence.badges and "below the floor" in convergence.text
