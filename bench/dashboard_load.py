"""Bounded load test of the dashboard: N concurrent clients for T seconds against `cairn dashboard serve`.

    .venv/bin/python bench/dashboard_load.py --clients 50 --seconds 20

Builds a synthetic coordinator workdir (ledger + signed repository) in a temp directory, starts the
real CLI in a subprocess with the rate limit raised out of the way, warms every page once, then
lets each client request a fixed mix of pages and API calls in a loop. It reports requests/s,
latency percentiles, statuses, and the server's RSS before and after the run. Client and server
share the machine, so on a 2-core box the numbers are a floor, not a ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

MIX = [
    "/",
    "/api/swarm",
    "/api/swarm",
    "/contributors",
    "/api/contributors?sort=hours",
    "/contributors/0000000000000001",
    "/convergence",
    "/releases",
    "/landmarks",
    "/static/dashboard.css",
]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def client_loop(
    session: aiohttp.ClientSession, base: str, offset: int, deadline: float, latencies: list[float], statuses: Counter
) -> None:
    i = offset
    while time.monotonic() < deadline:
        path = MIX[i % len(MIX)]
        i += 1
        started = time.perf_counter()
        try:
            async with session.get(base + path) as response:
                await response.read()
                statuses[response.status] += 1
        except aiohttp.ClientError as error:
            statuses[type(error).__name__] += 1
            continue
        latencies.append(time.perf_counter() - started)


async def run_load(base: str, clients: int, seconds: float) -> tuple[list[float], Counter, float]:
    latencies: list[float] = []
    statuses: Counter = Counter()
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        for path in MIX:  # warm-up: first render, caches, template compilation
            async with session.get(base + path) as response:
                await response.read()
        started = time.monotonic()
        deadline = started + seconds
        await asyncio.gather(*(client_loop(session, base, k, deadline, latencies, statuses) for k in range(clients)))
        elapsed = time.monotonic() - started
    return latencies, statuses, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--peers", type=int, default=40, help="synthetic contributors in the ledger")
    parser.add_argument("--hours", type=float, default=6.0, help="hours of synthetic history")
    parser.add_argument("--rate-limit", type=float, default=1e6, help="per-client requests/s on the server (raised out of the way)")
    args = parser.parse_args()

    from browser_util import dashboard_process

    from cairn.coordinator.publishing.repository import ReleaseRepository
    from cairn.dashboard.synthetic import build_workdir, default_peers

    with tempfile.TemporaryDirectory(prefix="cairn-dashboard-load-") as scratch:
        workdir = Path(scratch) / "coordinator"
        clock = time.perf_counter()
        build_workdir(
            workdir,
            now=time.time() + args.seconds + 60,
            peers=default_peers(args.peers),
            hours=args.hours,
            publisher=ReleaseRepository(workdir),
        )
        build_seconds = time.perf_counter() - clock
        ledger_mib = (workdir / "ledger.sqlite").stat().st_size / 2**20
        server_args = ["--rate-limit", str(args.rate_limit), "--rate-burst", str(args.rate_limit)]
        with dashboard_process(workdir, extra_args=server_args) as (base, process):
            rss_start = rss_kib(process.pid)  # `python -m cairn.cli` serves in this very process
            latencies, statuses, elapsed = asyncio.run(run_load(base, args.clients, args.seconds))
            rss_end = rss_kib(process.pid)
    report = {
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "ledger": {
            "peers": args.peers + 1,
            "hours": args.hours,
            "size_mib": round(ledger_mib, 1),
            "build_seconds": round(build_seconds, 1),
        },
        "requests": len(latencies),
        "requests_per_second": round(len(latencies) / elapsed, 1),
        "latency_ms": {
            "p50": round(1000 * percentile(latencies, 0.50), 1),
            "p90": round(1000 * percentile(latencies, 0.90), 1),
            "p99": round(1000 * percentile(latencies, 0.99), 1),
            "max": round(1000 * max(latencies, default=float("nan")), 1),
            "mean": round(1000 * statistics.fmean(latencies), 1) if latencies else None,
        },
        "statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)},
        "server_rss_mib": {"before": round(rss_start / 1024, 1), "after": round(rss_end / 1024, 1)},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
