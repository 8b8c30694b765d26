"""The dashboard over a synthetic coordinator workdir: every route, its JSON twin, and its defences.

The workdir is built once: a ledger written through cairn.protocol.ledger_schema.connect (three online
peers, two with hostile display names, one offline), and two releases signed into a real TUF
repository by the coordinator's publisher, plus one release the ledger knows but nobody signed.
Requests that must arrive byte-for-byte (traversal attempts, oversized bodies) go over a raw socket,
because an HTTP client would normalise or refuse them before they left.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from cairn.coordinator.publishing.repository import ReleaseRepository
from cairn.dashboard import views
from cairn.dashboard.app import DASHBOARD, DashboardConfig, TTLCache, make_app
from cairn.dashboard.charts import Series, line_chart, nice_ticks
from cairn.dashboard.cli import dashboard as dashboard_cli
from cairn.dashboard.security import (
    SECURITY_HEADERS,
    RateLimiter,
    client_key,
    rate_limit_middleware,
)
from cairn.dashboard.synthetic import HOSTILE_NAMES, build_workdir, default_peers
from cairn.protocol.dht_keys import ContributionRecord
from cairn.protocol.ledger_schema import connect

NOW = 1_800_000_000.0
ALICE, SCRIPT, IMG, BOB = "0000000000000001", "0000000000000002", "0000000000000003", "00000000000000ff"
PAGES = ["/", "/contributors", f"/contributors/{ALICE}", "/convergence", "/releases", "/landmarks"]
APIS = ["/api/swarm", "/api/contributors", f"/api/contributors/{ALICE}", "/api/convergence", "/api/releases", "/api/landmarks"]
aio = pytest.mark.asyncio


def _build(root: Path) -> Path:
    build_workdir(root, now=NOW, peers=default_peers(3), publisher=ReleaseRepository(root))
    # a release the coordinator recorded but that is not (yet) in the signed repository
    db = connect(root / "ledger.sqlite")
    manifest = json.loads((root / "releases" / "0.2.0" / "manifest.json").read_text())
    manifest.update(version="0.3.0", parent_version="0.2.0")
    db.execute("INSERT INTO releases VALUES ('0.3.0', '0.2.0', 9000, 2304000, ?, ?)", (NOW - 60, json.dumps(manifest)))
    db.close()
    return root


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("coordinator"))


@pytest.fixture
def workdir_copy(workdir, tmp_path) -> Path:
    """A private copy for tests that tamper with the repository."""
    return Path(shutil.copytree(workdir, tmp_path / "copy", symlinks=True))


def _config(workdir: Path, **overrides) -> DashboardConfig:
    return DashboardConfig(workdir=workdir, cache_seconds=0.0, rate_per_second=1e6, rate_burst=1e6, **overrides)


@pytest_asyncio.fixture
async def client(aiohttp_client, workdir):
    return await aiohttp_client(make_app(_config(workdir), clock=lambda: NOW))


async def raw_request(
    client, target: str, method: str = "GET", headers: dict[str, str] | None = None, body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    """Send `target` exactly as written; return status, headers (lower-case names) and body."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    lines = [f"{method} {target} HTTP/1.1", f"Host: {client.server.host}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status_line, *header_lines = head.decode("latin-1").strip().split("\r\n")
    parsed = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
    length = int(parsed.get("content-length", "0"))
    data = await asyncio.wait_for(reader.readexactly(length), 10) if length and method != "HEAD" else b""
    writer.close()
    return int(status_line.split()[1]), parsed, data


def assert_security_headers(headers) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name) == value, name
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert "'unsafe-inline'" not in headers["Content-Security-Policy"]


# ---- pages and their JSON twins ----------------------------------------------------------------


@aio
@pytest.mark.parametrize("path", PAGES)
async def test_every_page_renders_with_security_headers(client, path):
    response = await client.get(path)
    assert response.status == 200
    assert response.content_type == "text/html"
    assert_security_headers(response.headers)
    html = await response.text()
    assert '<script src="/static/dashboard.js?v=' in html
    assert re.search(r"<script>(?!alert)", html) is None, "no inline script (the CSP would block it)"
    assert ' style="' not in html, "no inline style attributes (the CSP would block them)"


@aio
@pytest.mark.parametrize("path", APIS)
async def test_every_api_returns_json(client, path):
    response = await client.get(path)
    assert response.status == 200
    assert response.content_type == "application/json"
    assert_security_headers(response.headers)
    assert isinstance(await response.json(), dict)


@aio
async def test_swarm_lists_online_peers_from_the_ledger(client):
    data = await (await client.get("/api/swarm")).json()
    names = {peer["display_name"] for peer in data["peers"]}
    assert names == {"alice-laptop", *HOSTILE_NAMES}, "bob went offline long ago"
    assert data["peers_online"] == 3
    assert data["global_step"] > 0 and data["samples_per_second"] > 0
    assert 0 <= data["seconds_since_allreduce"] < 60
    assert all(p["shard"] >= 0 and p["samples_per_second"] > 0 and p["uptime_seconds"] > 0 for p in data["peers"])
    assert data["join"] and data["repository_url"] == "http://127.0.0.1:8700"
    assert len(data["history"]) > 10


@aio
async def test_swarm_page_shows_numbers_and_join_command(client):
    html = await (await client.get("/")).text()
    assert 'data-live="/api/swarm"' in html
    assert "cairn peer run --join /ip4/127.0.0.1/tcp/31337/p2p/" in html
    assert html.count('<polyline class="line') == 2


@aio
@pytest.mark.parametrize(
    "sort, key, reverse",
    [
        ("samples", "credited_samples", True),
        ("hours", "hours_online", True),
        ("shards", "shards_completed", True),
        ("name", "display_name", False),
    ],
)
async def test_leaderboard_sorting(client, sort, key, reverse):
    data = await (await client.get(f"/api/contributors?sort={sort}")).json()
    values = [row[key] for row in data["rows"]]
    assert len(values) == 4
    expected = sorted(values, key=str.lower, reverse=reverse) if sort == "name" else sorted(values, reverse=reverse)
    assert values == expected
    assert data["sort"] == sort
    assert abs(sum(row["share"] for row in data["rows"]) - 1.0) < 1e-9
    assert all(row["credited_samples"] > 0 for row in data["rows"])


@aio
@pytest.mark.parametrize("sort", ["evil", "samples;DROP TABLE peers", "", "SAMPLES"])
async def test_leaderboard_rejects_unknown_sort(client, sort):
    for path in ("/contributors", "/api/contributors"):
        response = await client.get(path, params={"sort": sort})
        assert response.status == 400
        assert_security_headers(response.headers)


@aio
async def test_contributor_page_and_history(client):
    data = await (await client.get(f"/api/contributors/{ALICE}")).json()
    assert data["display_name"] == "alice-laptop" and data["online"]
    history = data["history"]
    assert len(history) > 100
    credited = [point["credited_samples"] for point in history]
    assert credited == sorted(credited) and credited[-1] == data["credited_samples"]
    assert len(data["spot_checks"]) == 2
    assert not data["rejected"] and data["failed_checks"] == 0
    html = await (await client.get(f"/contributors/{ALICE}")).text()
    assert html.count('<polyline class="line') == 4  # credited, claimed, loss, speed


@aio
@pytest.mark.parametrize("public_id", ["00000000000000aa", "ALICE", "0000000000000001x", "%2e%2e", "..%2f"])
async def test_unknown_contributor_is_404(client, public_id):
    for prefix in ("/contributors/", "/api/contributors/"):
        status, headers, _ = await raw_request(client, prefix + public_id)
        assert status == 404
        assert headers["content-security-policy"] == SECURITY_HEADERS["Content-Security-Policy"]
    assert (await (await client.get("/api/contributors/00000000000000aa")).json())["status"] == 404


@aio
async def test_convergence_data_and_charts(client):
    data = await (await client.get("/api/convergence")).json()
    assert len(data["loss_by_step"]) > 100
    assert data["loss_by_step"][0]["mean_loss"] > data["loss_by_step"][-1]["mean_loss"]
    assert len(data["peer_loss"]) == 4
    by_version = {r["version"]: r for r in data["releases"]}
    assert list(by_version) == ["0.1.0", "0.2.0", "0.3.0"]
    assert (
        by_version["0.2.0"]["metrics"]["relational/full/simlex_spearman"]
        > by_version["0.1.0"]["metrics"]["relational/full/simlex_spearman"]
    )
    assert [dims for dims, _ in by_version["0.2.0"]["matryoshka"]["relational/simlex_spearman"]] == [16, 32, 64]
    assert by_version["0.2.0"]["compatibility"]["relational/head_ratio"] == 0.963
    assert by_version["0.2.0"]["compatibility"]["parent"] == "0.1.0"
    assert by_version["0.1.0"]["compatibility"] == {}
    promises = {row["promise"].split(":")[0]: row for row in by_version["0.2.0"]["promises"]}
    assert promises["Matryoshka"]["measured"] == 16 and promises["Matryoshka"]["goal"] == "≤ 8 (K/8)"
    assert promises["Matryoshka"]["met"] is False and promises["Matryoshka"]["detail"] == "random landmark order: 64"
    previous = promises["Compatibility with the previous release"]
    assert previous["measured"] == 0.963 and previous["met"] is False and previous["detail"] == "absolute vectors: 36.5%"
    assert (
        promises["Alignment with all-MiniLM-L6-v2"]["measured"] == pytest.approx(0.225)
        and promises["Alignment with all-MiniLM-L6-v2"]["met"] is None
    )
    assert [row["promise"].split(":")[0] for row in by_version["0.1.0"]["promises"]] == ["Matryoshka", "Alignment with all-MiniLM-L6-v2"]
    html = await (await client.get("/convergence")).text()
    # loss x2; metrics: 5 suite metrics + k95 + mutual_knn10; Matryoshka: 5 suite curves + 3 probe curves; compatibility per view
    assert html.count('class="chart-svg"') == 2 + 7 + 8 + 2
    assert "relational/cross_retrieval_r1" in html
    assert "Promises by release" in html and '<span class="badge bad">not yet</span>' in html


@aio
async def test_releases_list_signed_files_keys_and_commands(client):
    data = await (await client.get("/api/releases")).json()
    signing = data["signing"]
    assert signing["error"] is None and signing["all_verified"]
    assert set(signing["roles"]) == {"root", "targets", "snapshot", "timestamp"}
    assert signing["targets_signed_by"] == signing["roles"]["targets"]["keyids"]
    releases = {r["version"]: r for r in data["releases"]}
    assert [r["version"] for r in data["releases"]] == ["0.3.0", "0.2.0", "0.1.0"]
    latest = releases["0.2.0"]
    assert latest["signed"] and latest["landmarks_version"] == 2 and latest["parent_version"] == "0.1.0"
    files = {f["name"]: f for f in latest["files"]}
    assert set(files) == {"manifest.json", "model.safetensors", "config.json", "tokenizer.json", "landmarks.json"}
    signed_hash = latest["manifest"]["files"]["model.safetensors"]["sha256"]
    assert files["model.safetensors"]["sha256"] == signed_hash and files["model.safetensors"]["length"] == 256 * 1024
    assert latest["commands"] == {
        "pull": "cairn release pull http://127.0.0.1:8700 --version 0.2.0 --to ./cairn-0.2.0",
        "verify": "cairn release verify ./cairn-0.2.0",
    }
    unsigned = releases["0.3.0"]
    assert not unsigned["signed"] and all(f["url"] is None for f in unsigned["files"])
    html = await (await client.get("/releases")).text()
    for keyid in signing["roles"]["targets"]["keyids"]:
        assert keyid in html
    assert "cairn release pull http://127.0.0.1:8700 --version 0.1.0 --to ./cairn-0.1.0" in html
    assert "not in the signed repository" in html
    assert "1,234,567" in html  # manifest extras (encoder parameters) are shown


@aio
async def test_landmarks_mark_what_each_version_appended(client):
    data = await (await client.get("/api/landmarks")).json()
    v1, v2 = data["sets"]
    assert (v1["version"], v1["size"], v1["extends"]) == (1, 24, None)
    assert (v2["version"], v2["size"], v2["extends"], v2["first_new"], v2["appended"]) == (2, 32, 1, 24, 8)
    assert v2["anchors"][:24] == v1["anchors"]
    assert "run configuration" in v1["sources"] and v2["releases"] == ["0.3.0", "0.2.0"]
    html = await (await client.get("/landmarks")).text()
    assert html.count('<li class="new">') == 8


# ---- downloads -----------------------------------------------------------------------------------


@aio
async def test_download_full_file_and_ranges(client, workdir):
    expected = (workdir / "releases" / "0.1.0" / "model.safetensors").read_bytes()
    url = "/releases/0.1.0/files/model.safetensors"
    response = await client.get(url)
    assert response.status == 200 and await response.read() == expected
    assert response.headers["Accept-Ranges"] == "bytes"
    assert "attachment" in response.headers["Content-Disposition"]
    assert_security_headers(response.headers)

    response = await client.get(url, headers={"Range": "bytes=100-199"})
    assert response.status == 206 and await response.read() == expected[100:200]
    assert response.headers["Content-Range"] == f"bytes 100-199/{len(expected)}"
    response = await client.get(url, headers={"Range": "bytes=-10"})
    assert response.status == 206 and await response.read() == expected[-10:]
    response = await client.get(url, headers={"Range": f"bytes={len(expected)}-"})
    assert response.status == 416
    assert_security_headers(response.headers)
    response = await client.head(url)
    assert response.status == 200 and int(response.headers["Content-Length"]) == len(expected)


@aio
@pytest.mark.parametrize(
    "path",
    [
        "/releases/9.9.9/files/manifest.json",  # unknown version
        "/releases/0.3.0/files/manifest.json",  # known to the ledger only: nothing signed to serve
        "/releases/0.1.0/files/ledger.sqlite",  # not a file of the release
        "/releases/01.0.0/files/manifest.json",  # non-canonical version spelling
        "/releases/0.1.0-rc1/files/manifest.json",
        "/releases/0.1.0/files/MANIFEST.JSON",
    ],
)
async def test_download_unknown_is_404(client, path):
    response = await client.get(path)
    assert response.status == 404
    assert_security_headers(response.headers)


TRAVERSALS = [
    "/releases/0.1.0/files/../../../ledger.sqlite",
    "/releases/0.1.0/files/..%2f..%2f..%2fledger.sqlite",
    "/releases/0.1.0/files/%2e%2e%2f%2e%2e%2fledger.sqlite",
    "/releases/0.1.0/files/%2e%2e",
    "/releases/%2e%2e/files/ledger.sqlite",
    "/releases/..%2f..%2f/files/ledger.sqlite",
    "/releases/0.1.0/files/%252e%252e%252fledger.sqlite",
    "/releases/0.1.0/files/manifest.json%00.png",
    "/releases/0.1.0/files/..\\..\\ledger.sqlite",
    "/static/../ledger.sqlite",
    "/static/..%2fapp.py",
    "/static/%2e%2e%2f%2e%2e%2fledger.sqlite",
    "/static/%2e%2e/app.py",
    "//etc/passwd",
    "/..%2f..%2f..%2fetc%2fpasswd",
    "/contributors/..%2f..%2fledger.sqlite",
]


@aio
@pytest.mark.parametrize("target", TRAVERSALS)
async def test_path_traversal_never_escapes(client, target):
    status, headers, body = await raw_request(client, target)
    assert status in (400, 404), target
    assert b"SQLite format" not in body and b"root:" not in body and b"import" not in body
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name.lower()) == value


@aio
async def test_symlinks_in_the_repository_are_not_followed(aiohttp_client, workdir_copy, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    releases = workdir_copy / "repository" / "targets" / "releases"
    # a target file replaced by a symlink to an outside copy with the same bytes
    (target,) = (releases / "0.1.0").glob("*.model.safetensors")
    secret = outside / "model.safetensors"
    shutil.copy(target, secret)
    target.unlink()
    target.symlink_to(secret)
    # a whole release directory replaced by a symlink to an outside copy
    shutil.copytree(releases / "0.2.0", outside / "0.2.0")
    shutil.rmtree(releases / "0.2.0")
    (releases / "0.2.0").symlink_to(outside / "0.2.0", target_is_directory=True)
    client = await aiohttp_client(make_app(_config(workdir_copy), clock=lambda: NOW))
    assert (await client.get("/releases/0.1.0/files/model.safetensors")).status == 404
    assert (await client.get("/releases/0.1.0/files/config.json")).status == 200
    for name in ("model.safetensors", "manifest.json", "config.json"):
        assert (await client.get(f"/releases/0.2.0/files/{name}")).status == 404


@aio
async def test_tampered_file_is_not_served(aiohttp_client, workdir_copy):
    (target,) = (workdir_copy / "repository" / "targets" / "releases" / "0.1.0").glob("*.model.safetensors")
    data = bytearray(target.read_bytes())
    data[1000] ^= 1
    target.write_bytes(bytes(data))
    client = await aiohttp_client(make_app(_config(workdir_copy), clock=lambda: NOW))
    assert (await client.get("/releases/0.1.0/files/model.safetensors")).status == 404


# ---- hostile input -------------------------------------------------------------------------------


@aio
@pytest.mark.parametrize("path", ["/", "/contributors", f"/contributors/{SCRIPT}", f"/contributors/{IMG}", "/convergence"])
async def test_hostile_display_names_are_escaped(client, path):
    html = await (await client.get(path)).text()
    assert "<script>alert(1)" not in html and "<img src=x" not in html
    if path in ("/", "/contributors", "/convergence", f"/contributors/{SCRIPT}"):
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    if path in ("/", "/contributors", "/convergence", f"/contributors/{IMG}"):
        assert "&#34;&gt;&lt;img src=x onerror=alert(2)&gt;" in html


@aio
async def test_api_carries_names_verbatim_as_json(client):
    response = await client.get("/api/contributors")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    names = {row["display_name"] for row in (await response.json())["rows"]}
    assert set(HOSTILE_NAMES) <= names


@aio
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_no_route_takes_a_body(client, method):
    for path in ("/", "/api/swarm", "/releases/0.1.0/files/config.json"):
        response = await client.request(method, path, data=b"x")
        assert response.status == 405
        assert "GET" in response.headers["Allow"]
        assert_security_headers(response.headers)


@aio
async def test_huge_body_is_refused_before_it_is_read(client):
    status, headers, _ = await raw_request(client, "/", "POST", {"Content-Length": str(100 << 20)}, body=b"x" * 4096)
    assert status == 413
    assert headers["x-frame-options"] == "DENY" and "content-security-policy" in headers
    status, headers, _ = await raw_request(client, "/api/swarm", "GET", {"Content-Length": str(10 << 20)}, body=b"x" * 1024)
    assert status == 413 and headers["x-content-type-options"] == "nosniff"


@aio
async def test_internal_errors_are_pages_with_headers_and_no_traceback(client, monkeypatch):
    def boom(sources):
        raise RuntimeError("secret detail /work/path")

    monkeypatch.setattr(views, "swarm", boom)
    for path in ("/", "/api/swarm"):
        response = await client.get(path)
        assert response.status == 500
        assert_security_headers(response.headers)
        text = await response.text()
        assert "secret detail" not in text and "Traceback" not in text


@aio
async def test_rate_limit_answers_429_with_headers(aiohttp_client, workdir):
    app = make_app(DashboardConfig(workdir=workdir, rate_per_second=0.01, rate_burst=3), clock=lambda: NOW)
    client = await aiohttp_client(app)
    statuses = [(await client.get("/static/dashboard.css")).status for _ in range(3)]
    assert statuses == [200, 200, 200]
    for path in ("/api/swarm", "/"):
        response = await client.get(path)
        assert response.status == 429
        assert int(response.headers["Retry-After"]) >= 1
        assert_security_headers(response.headers)


def test_rate_limiter_table_is_bounded():
    clock = [0.0]
    limiter = RateLimiter(rate=1.0, burst=2, max_clients=100, clock=lambda: clock[0])
    for i in range(20000):
        assert limiter.acquire(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}") == 0.0
        assert len(limiter) <= 100
    assert limiter.acquire("attacker") == 0.0 and limiter.acquire("attacker") == 0.0
    assert limiter.acquire("attacker") == pytest.approx(1.0)
    clock[0] += 1.0
    assert limiter.acquire("attacker") == 0.0


@aio
async def test_rate_limit_middleware_memory_stays_bounded_over_many_addresses():
    limiter = RateLimiter(rate=1.0, burst=1, max_clients=64)
    middleware = rate_limit_middleware(limiter)

    async def handler(request):
        return web.Response(text="ok")

    for i in range(20000):  # the middleware reads only request.remote
        remote = f"2001:db8:{i:x}::1" if i % 2 else f"198.51.{i >> 8 & 255}.{i & 255}"
        assert (await middleware(SimpleNamespace(remote=remote), handler)).status == 200
        assert len(limiter) <= 64
    request = SimpleNamespace(remote="203.0.113.9")
    await middleware(request, handler)
    with pytest.raises(web.HTTPTooManyRequests):
        await middleware(request, handler)


def test_ipv6_clients_share_a_bucket_per_64():
    def key(address):
        transport = mock.Mock()
        transport.get_extra_info.return_value = (address, 1)
        return client_key(make_mocked_request("GET", "/", transport=transport))

    assert key("2001:db8:1:2::1") == key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert key("::ffff:192.0.2.1") == key("192.0.2.1") == "192.0.2.1"


# ---- metrics -------------------------------------------------------------------------------------


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@aio
async def test_metrics_use_route_templates_and_are_monotonic(client):
    for path in ("/", f"/contributors/{ALICE}", f"/contributors/{SCRIPT}", "/no/such/page", "/api/swarm"):
        await client.get(path)
    first = await (await client.get("/metrics")).text()
    await client.get(f"/contributors/{BOB}")
    second = await (await client.get("/metrics")).text()
    before, after = _samples(first), _samples(second)
    key = ("cairn_dashboard_requests_total", (("route", "/contributors/{public_id}"), ("status", "200")))
    assert before[key] == 2 and after[key] == 3
    assert before[("cairn_dashboard_requests_total", (("route", "unmatched"), ("status", "404")))] == 1
    assert before[("cairn_dashboard_peers_online", ())] == 3
    assert before[("cairn_dashboard_global_step", ())] > 0
    assert any(name == "cairn_dashboard_request_duration_seconds_bucket" for name, _ in before)
    for name, labels in after:
        if name.startswith("cairn_dashboard_requests"):
            assert after[(name, labels)] >= before.get((name, labels), 0)
        for _, value in labels:
            assert ALICE not in value and SCRIPT not in value and "peer_id" not in value


# ---- robustness ----------------------------------------------------------------------------------


@aio
async def test_missing_ledger_and_repository_still_serve(aiohttp_client, tmp_path):
    client = await aiohttp_client(make_app(_config(tmp_path), clock=lambda: NOW))
    for path in PAGES[:2] + PAGES[3:] + APIS[:2] + APIS[3:]:
        response = await client.get(path)
        assert response.status == 200, path
    html = await (await client.get("/")).text()
    assert "no ledger yet" in html
    data = await (await client.get("/api/releases")).json()
    assert data["releases"] == [] and "no release repository" in data["signing"]["error"]
    assert (await client.get(f"/contributors/{ALICE}")).status == 404


@aio
async def test_without_coordinator_json_commands_use_a_placeholder(aiohttp_client, workdir_copy):
    (workdir_copy / "coordinator.json").unlink()
    client = await aiohttp_client(make_app(_config(workdir_copy), clock=lambda: NOW))
    data = await (await client.get("/api/releases")).json()
    assert data["releases"][1]["commands"]["pull"] == "cairn release pull REPOSITORY_URL --version 0.2.0 --to ./cairn-0.2.0"
    assert (await (await client.get("/api/swarm")).json())["join"] == []


def _fingerprint(root: Path) -> dict[str, tuple[int, str]]:
    return {
        str(path.relative_to(root)): (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


@aio
async def test_dashboard_never_writes_and_restart_loses_nothing(aiohttp_client, workdir_copy):
    before = _fingerprint(workdir_copy)
    answers = []
    for _ in range(2):  # a restart is a new app over the same directory
        client = await aiohttp_client(make_app(_config(workdir_copy), clock=lambda: NOW))
        answers.append([await (await client.get(path)).json() for path in APIS])
        for path in PAGES + ["/releases/0.1.0/files/manifest.json", "/metrics"]:
            await client.get(path)
        await client.close()
    assert answers[0] == answers[1]
    after = _fingerprint(workdir_copy)

    def content(files):  # SQLite's -wal/-shm bookkeeping may come and go; the database itself must not change
        return {k: v for k, v in files.items() if not k.endswith(("-wal", "-shm"))}

    assert content(after) == content(before)


class FakeLive:
    """Stands in for cairn.dashboard.live.LiveRecords (a real DHT is covered by the end-to-end test)."""

    def __init__(self, records):
        self.records = records

    def snapshot(self):
        return self.records, None

    def start(self):
        pass

    def shutdown(self):
        pass


def _record(name: str, **overrides) -> ContributionRecord:
    """A record with the fields the dashboard reads (construct: the rest of the schema is the peer's business)."""
    fields = {
        "display_name": name,
        "samples_per_second": 77.0,
        "device": "cpu",
        "uptime_seconds": 120.0,
        "shard": 5,
        "loss": 1.5,
        "reported_at": NOW - 2.0,
    }
    return ContributionRecord.construct(**{**fields, **overrides})


@aio
async def test_live_dht_records_join_the_swarm_view(aiohttp_client, workdir):
    live = FakeLive(
        {
            ALICE: _record("alice-laptop", samples_per_second=99.5, shard=3),
            "00000000000000dd": _record("dht-only <b>"),
            "00000000000000ee": _record("stale", reported_at=NOW - 600.0),
        }
    )
    client = await aiohttp_client(make_app(_config(workdir), clock=lambda: NOW, live=live))
    data = await (await client.get("/api/swarm")).json()
    peers = {p["public_id"]: p for p in data["peers"]}
    assert data["sources"] == ["ledger", "dht"] and data["peers_online"] == 4
    assert peers[ALICE]["samples_per_second"] == 99.5 and peers[ALICE]["shard"] == 3 and peers[ALICE]["source"] == "ledger+dht"
    assert peers["00000000000000dd"]["source"] == "dht" and "00000000000000ee" not in peers
    html = await (await client.get("/")).text()
    assert "dht-only &lt;b&gt;" in html


@aio
async def test_cache_computes_once_for_concurrent_callers():
    calls = []

    async def compute():
        calls.append(1)
        await asyncio.sleep(0.05)
        return {"n": len(calls)}

    cache = TTLCache(ttl=5.0, size=2)
    results = await asyncio.gather(*(cache.get("k", compute) for _ in range(20)))
    assert len(calls) == 1 and all(r == {"n": 1} for r in results)
    for key in ("a", "b", "c"):
        await cache.get(key, compute)
    assert len(cache._entries) == 2


@aio
async def test_static_assets(client):
    response = await client.get("/static/dashboard.js")
    assert response.status == 200 and response.content_type == "text/javascript"
    assert "innerHTML" not in await response.text()
    digest = client.server.app[DASHBOARD].static["dashboard.css"][2]
    response = await client.get(f"/static/dashboard.css?v={digest}")
    assert "immutable" in response.headers["Cache-Control"]
    assert (await client.get("/static/app.py")).status == 404


def test_charts_escape_and_handle_empty_data():
    svg = line_chart([Series("<script>x</script>", [(0, 1.0), (1, 2.0), (2, float("nan"))])], title="t<", x_label="x", y_label="y")
    assert "<script>x" not in svg and "&lt;script&gt;x&lt;/script&gt;" in svg and "t&lt;" in svg
    assert svg.count("<circle") == 2
    assert "No data yet" in line_chart([Series("a", [])], title="t", x_label="x", y_label="y")
    ticks = nice_ticks(0.13, 2.97)
    assert ticks[0] <= 0.13 and ticks[-1] >= 2.97 and 3 <= len(ticks) <= 8


def test_cli_serve_help():
    result = CliRunner().invoke(dashboard_cli, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--workdir", "--host", "--port", "--dht-join"):
        assert option in result.output


def test_ledger_is_opened_read_only(workdir):
    sources = views.Sources.for_workdir(workdir)
    with pytest.raises(Exception, match="readonly|read-only"):
        sources.ledger.read(lambda db: db.execute("DELETE FROM peers"))
    assert os.path.getsize(workdir / "ledger.sqlite") > 0
    assert len(views.contributors(sources, "samples")["rows"]) == 4


def test_promise_rows_never_guess_from_malformed_manifests():
    """Manifests arrive from the network: wrong types give "not measured" rows or no row, never an exception."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from cairn.dashboard.promises import promise_rows
    from cairn.releases.manifest import Manifest

    leaves = st.one_of(st.none(), st.booleans(), st.integers(-5, 500), st.floats(allow_nan=False), st.text(max_size=5))
    documents = st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=3),
            st.dictionaries(
                st.sampled_from(
                    [
                        "matryoshka",
                        "outside",
                        "relational",
                        "absolute",
                        "goal",
                        "k95",
                        "head_ratio",
                        "grandparent",
                        "mutual_knn10",
                        "chance",
                        "random_order",
                        "yardstick",
                        "scores",
                        "full",
                        "mode",
                        "gloss_lemma_r10",
                        "bbc_probe_acc",
                    ]
                ),
                children,
                max_size=4,
            ),
        ),
        max_leaves=20,
    )

    @settings(max_examples=300, deadline=None)
    @given(
        st.dictionaries(st.sampled_from(["matryoshka", "outside", "yardstick", "relational"]), documents),
        st.dictionaries(st.sampled_from(["relational", "absolute", "grandparent"]), documents),
    )
    def check(metrics, compatibility):
        base = Manifest(
            version=None,
            parent_version=None,
            run_id="r",
            global_step=0,
            landmarks_version=1,
            landmarks_digest="0" * 64,
            files={},
            metrics=metrics,
            compatibility=compatibility,
        )
        for row in promise_rows(base):
            assert row["measured"] is None or isinstance(row["measured"], float)
            assert row["met"] in (None, True, False)
            assert row["measured"] is not None or row["met"] is None

    check()
    assert promise_rows(None) == []


def test_the_yardstick_rows_say_which_tasks_a_release_beats():
    from cairn.dashboard.promises import promise_rows
    from cairn.evaluation.yardstick import against_yardstick
    from cairn.releases.manifest import Manifest

    mine = {"gloss_lemma_r10": 0.5, "simlex_spearman": 0.2, "wordsim_spearman": 0.7, "bbc_probe_acc": 0.9}
    theirs = {"gloss_lemma_r10": 0.28, "simlex_spearman": 0.32, "wordsim_spearman": 0.59, "bbc_probe_acc": 0.88}
    block = against_yardstick(mine, theirs, quick=True)
    assert block["beats"] == {"gloss_lemma_r10": True, "simlex_spearman": False, "wordsim_spearman": True, "bbc_probe_acc": True}
    assert block["beats_all"] is False and block["mode"] == "quick"
    manifest = Manifest(
        version=None,
        parent_version=None,
        run_id="r",
        global_step=0,
        landmarks_version=1,
        landmarks_digest="0" * 64,
        files={},
        metrics={"relational": {"full": mine}, "yardstick": block},
        compatibility={},
    )
    rows = {row["promise"]: row for row in promise_rows(manifest) if "yardstick" in row["promise"]}
    assert len(rows) == 4
    assert rows["Beats the TF-IDF+SVD yardstick: SimLex-999 ρ"]["met"] is False
    assert rows["Beats the TF-IDF+SVD yardstick: BBC topic probe"]["met"] is True


@aio
async def test_peers_whose_work_was_rejected_are_marked(client):
    """Issue 12: a peer that failed a spot check is marked on the leaderboard and its page (the synthetic ledger's
    hostile-named peer fails both of its checks; every other peer passes)."""
    rows = (await (await client.get("/api/contributors")).json())["rows"]
    rejected = [row for row in rows if row["rejected"]]
    assert [row["display_name"] for row in rejected] == [name for name in HOSTILE_NAMES if name.startswith('"')]
    assert rejected[0]["failed_checks"] == 2 and all(row["failed_checks"] == 0 for row in rows if not row["rejected"])
    html = await (await client.get("/contributors")).text()
    assert html.count(">rejected</span>") == 1
    page = await (await client.get(f"/contributors/{rejected[0]['public_id']}")).text()
    assert ">rejected</span>" in page and "2 failed spot check(s)" in page
