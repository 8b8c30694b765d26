"""Joining that works the first time (issue 13, item 3): N consecutive `cairn peer run` starts against a running swarm.

    .venv/bin/python bench/join.py --starts 50 --out bench/out/join.json

A coordinator and one long-running peer (the swarm) run on loopback. Then, N times in a row, a volunteer's peer
starts with the same workdir (a volunteer restarting: its identity, tokenizer and corpus cache are kept; the
first start also builds them and is reported apart), and the benchmark waits until the coordinator's ledger holds
a record of that peer with trained samples — the moment the network sees it contribute — or until --deadline
seconds have passed. Then it stops the peer with SIGTERM (Ctrl+C's path) and starts the next. A start that does
not contribute in time counts as a failure, with the last line its log printed (the one-line cause).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cairn.peer.swarm import Service, cairn, start_loopback_coordinator, stop_services  # noqa: E402


def latest_record(ledger: Path, name: str) -> tuple[float, int]:
    """(reported_at, trained samples) of the ledger's latest record of the peer called `name`; (0, 0) when none."""
    if not ledger.exists():
        return 0.0, 0
    db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=5)
    try:
        row = db.execute(
            "SELECT r.reported_at, r.samples FROM records r JOIN peers p USING(public_id) WHERE p.display_name = ? "
            "ORDER BY r.id DESC LIMIT 1",
            (name,),
        ).fetchone()
        return (float(row[0]), int(row[1])) if row else (0.0, 0)
    except sqlite3.OperationalError:
        return 0.0, 0
    finally:
        db.close()


def last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()] if log.exists() else []
    return lines[-1][-300:] if lines else "(no output)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=50)
    parser.add_argument("--deadline", type=float, default=30.0, help="seconds from start to a contributing record")
    parser.add_argument("--corpus", default="wordnet")
    parser.add_argument("--root", type=Path, default=Path("bench/out/join"))
    parser.add_argument("--out", type=Path, default=Path("bench/out/join.json"))
    args = parser.parse_args()
    if args.starts < 1 or args.deadline <= 0:
        raise SystemExit("join: --starts must be >= 1 and --deadline > 0")
    coordinator_dir = args.root / "coordinator"
    if not (coordinator_dir / "run.json").exists():
        subprocess.run(
            cairn(
                "coordinator",
                "init",
                "--workdir",
                str(coordinator_dir),
                "--run-id",
                "join-bench",
                "--corpus",
                args.corpus,
                "--compat-weight",
                "0",
            ),
            check=True,
            capture_output=True,
        )
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    logs = args.root / "logs"
    coordinator, join = start_loopback_coordinator(coordinator_dir, logs / "coordinator.log", env)
    services, results = [coordinator], []
    try:

        def peer(name: str, log: Path) -> Service:
            return Service(
                name,
                cairn(
                    "peer",
                    "run",
                    "--join",
                    join,
                    "--name",
                    name,
                    "--workdir",
                    str(args.root / "peers" / name),
                    "--host",
                    "127.0.0.1",
                    "--torch-threads",
                    "1",
                    "--no-progress",
                    "--batch-size",
                    "64",
                    "--wait-for-peers",
                    "1",
                ),
                log,
            )

        anchor = peer("anchor", logs / "anchor.log")
        anchor.start(env)
        services.append(anchor)
        ledger = coordinator_dir / "ledger.sqlite"
        deadline = time.monotonic() + 600
        while latest_record(ledger, "anchor")[1] == 0:
            if time.monotonic() > deadline or not anchor.alive():
                raise SystemExit(f"join: the swarm's first peer never contributed; see {anchor.log}")
            time.sleep(1)
        for index in range(args.starts):
            log = logs / f"volunteer-{index:02d}.log"
            log.unlink(missing_ok=True)
            volunteer = peer("volunteer", log)
            session_start = time.time()  # a record reported after this is this session's (same machine, same clock)
            began = time.monotonic()
            volunteer.start(env)
            seconds = None
            while time.monotonic() - began < args.deadline and volunteer.alive():
                reported_at, samples = latest_record(ledger, "volunteer")
                if reported_at > session_start and samples > 0:  # a record of this session, with trained samples
                    seconds = time.monotonic() - began
                    break
                time.sleep(0.5)
            stop_services([volunteer])
            result = {
                "start": index,
                "contributed_after_s": seconds,
                "exit_code": volunteer.process.returncode,
                "cause": None if seconds is not None else last_line(log),
            }
            results.append(result)
            print(json.dumps(result), flush=True)
    finally:
        stop_services(list(reversed(services)))
    ok = [r for r in results if r["contributed_after_s"] is not None]
    summary = {
        "starts": len(results),
        "contributed_within_deadline": len(ok),
        "deadline_s": args.deadline,
        "first_start_s": results[0]["contributed_after_s"] if results else None,
        "median_s": statistics.median(r["contributed_after_s"] for r in ok) if ok else None,
        "max_s": max(r["contributed_after_s"] for r in ok) if ok else None,
        "failures": [r for r in results if r["contributed_after_s"] is None],
        "load_average": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "results": results}, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
