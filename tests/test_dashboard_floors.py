"""The dashboard must not make a run that learns nothing look healthy (issue 18, item 6): the loss charts carry
the chance line ln(batch size), lines break across gaps between runs, the Matryoshka badge needs a full vector
above a floor, scores keep a 0..1 axis, counts and shares read as numbers and percentages, the status dot is grey
without a coordinator or peers, and collapsed peers are marked. A ledger from before the `collapsed` column
still serves."""

from __future__ import annotations

import json
import math
import re
import sqlite3
from pathlib import Path

import pytest

from cairn.dashboard.app import DashboardConfig, make_app
from cairn.dashboard.charts import Series, line_chart, split_at_gaps
from cairn.dashboard.pages import fmt_metric
from cairn.dashboard.promises import promise_rows
from cairn.dashboard.synthetic import BATCH_SIZE, build_workdir, default_peers
from cairn.protocol.ledger_schema import SCHEMA_VERSION, connect, has_column
from cairn.releases.manifest import read_manifest

NOW = 1_800_000_000.0
ALICE = "0000000000000001"
aio = pytest.mark.asyncio


@pytest.fixture(scope="module")
def chance_run(tmp_path_factory) -> Path:
    """A run at chance: two sessions with a 10-minute gap between them, alice's records flagged collapsed."""
    root = tmp_path_factory.mktemp("chance")
    return build_workdir(root, now=NOW, peers=default_peers(3), at_chance=True, gap=(0.4, 0.6), collapsed=frozenset({ALICE}))


def _app(workdir: Path, now: float = NOW):
    return make_app(DashboardConfig(workdir=workdir, cache_seconds=0.0, rate_per_second=1e6, rate_burst=1e6), clock=lambda: now)


def _polylines(html: str, title: str) -> list[str]:
    figure = html[html.index(title) :]
    figure = figure[: figure.index("</figure>")]
    return re.findall(r'<polyline class="line [^"]*" points="([^"]*)"', figure)


@aio
async def test_loss_charts_show_the_chance_line_and_break_at_gaps(aiohttp_client, chance_run):
    client = await aiohttp_client(_app(chance_run))
    swarm = await (await client.get("/")).text()
    chance = f"chance: ln {BATCH_SIZE} = {math.log(BATCH_SIZE):.2f}"
    assert chance in swarm
    convergence = await (await client.get("/convergence")).text()
    assert convergence.count('class="reference"') == 2 and chance in convergence  # by step and by wall time
    contributor = await (await client.get(f"/contributors/{ALICE}")).text()
    assert chance in contributor
    # the swarm was down for 12 minutes: two pieces of line, not one diagonal across the gap
    assert len(_polylines(swarm, "Swarm speed, last hour")) == 2
    assert len(_polylines(convergence, "Training loss vs wall time")) >= 2
    data = await (await client.get("/api/swarm")).json()
    assert data["chance"] == {"batch_size": BATCH_SIZE, "loss": pytest.approx(math.log(BATCH_SIZE))}


def test_split_at_gaps_keeps_steady_data_whole():
    steady = [(float(t), 1.0) for t in range(0, 600, 5)]
    assert split_at_gaps(steady) == [steady]
    gapped = steady[:50] + [(t + 900.0, y) for t, y in steady[50:]]
    assert [len(part) for part in split_at_gaps(gapped)] == [50, len(steady) - 50]
    # a step axis is never split: a chart of loss vs global step has no wall-clock gaps
    chart = line_chart([Series("loss", [(0, 1.0), (1, 1.0), (1000, 1.0)])], title="t", x_label="x", y_label="y")
    assert chart.count("<polyline") == 1


def test_score_charts_keep_the_whole_zero_to_one_axis():
    chart = line_chart([Series("acc", [(0, 0.20), (1, 0.21)])], title="t", x_label="x", y_label="y", y_range=(0.0, 1.0))
    labels = re.findall(r'<text class="tick" [^>]*text-anchor="end">([^<]*)</text>', str(chart))
    assert float(labels[0]) <= 0.0 and float(labels[-1]) >= 1.0, labels


def test_matryoshka_badge_needs_the_full_vector_above_the_floor(chance_run):
    rows = {row["promise"].split(":")[0]: row for row in promise_rows(read_manifest(chance_run / "releases" / "0.2.0"))}
    matryoshka = rows["Matryoshka"]
    assert matryoshka["measured"] == 8.0 and matryoshka["met"] is None, matryoshka  # k95 8 <= goal 8, but at chance
    assert "below the floor" in matryoshka["detail"]


@aio
async def test_releases_show_counts_and_percentages(aiohttp_client, chance_run, tmp_path):
    client = await aiohttp_client(_app(chance_run))
    convergence = await (await client.get("/convergence")).text()
    promises = convergence[convergence.index("Promises by release") :]
    assert "8.0000" not in promises and re.search(r'<td class="n">8</td>', promises), promises[:3000]
    assert '<span class="badge ok">met</span>' not in promises
    assert fmt_metric(0.1364, "relational/bbc_probe_acc") == "13.6 %"
    assert fmt_metric(0.963, "relational/head_ratio") == "96.3 %"
    assert fmt_metric(8.0, "k95") == "8" and fmt_metric(0.3512, "simlex_spearman") == "0.3512"


@aio
async def test_status_dot_is_green_only_with_a_coordinator_and_peers(aiohttp_client, chance_run):
    live = await aiohttp_client(_app(chance_run))
    assert (await (await live.get("/api/swarm")).json())["status"] == "training"
    assert 'class="live-dot"' in await (await live.get("/")).text()
    # ten minutes later: no snapshot and nobody online, the coordinator is gone
    later = await aiohttp_client(_app(chance_run, now=NOW + 600))
    assert (await (await later.get("/api/swarm")).json())["status"] == "idle"
    assert 'class="live-dot idle"' in await (await later.get("/")).text()


@aio
async def test_collapsed_peers_are_marked(aiohttp_client, chance_run):
    client = await aiohttp_client(_app(chance_run))
    peers = {p["public_id"]: p for p in (await (await client.get("/api/swarm")).json())["peers"]}
    assert peers[ALICE]["collapsed"] is True and not any(p["collapsed"] for key, p in peers.items() if key != ALICE)
    html = await (await client.get("/")).text()
    row = html[html.index(f"/contributors/{ALICE}") :]
    assert ">collapsed</span>" in row[: row.index("</tr>")]


@aio
async def test_a_ledger_from_before_the_collapsed_column_is_migrated_and_still_read(aiohttp_client, tmp_path):
    workdir = build_workdir(tmp_path / "old", now=NOW, peers=default_peers(3))
    ledger = workdir / "ledger.sqlite"
    db = sqlite3.connect(ledger)
    db.execute("ALTER TABLE records DROP COLUMN collapsed")  # as schema 1 wrote it
    db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    client = await aiohttp_client(_app(workdir))  # the dashboard (read-only) before the coordinator migrated it
    peers = (await (await client.get("/api/swarm")).json())["peers"]
    assert peers and not any(p["collapsed"] for p in peers)
    before = sqlite3.connect(ledger).execute("SELECT COUNT(*) FROM records").fetchone()[0]
    migrated = connect(ledger)  # the coordinator's connection
    assert has_column(migrated, "records", "collapsed")
    assert migrated.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    assert tuple(migrated.execute("SELECT COUNT(*), SUM(collapsed) FROM records").fetchone()) == (before, 0)
    migrated.close()
    assert json.loads((workdir / "run.json").read_text())["training"]["batch_size"] == BATCH_SIZE
