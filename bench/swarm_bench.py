"""Swarm measurements on one machine: bytes per global step per compression mode, local updates,
scaling from one peer on one core to two peers on two cores, and compute utilisation.

    .venv/bin/python bench/swarm_bench.py --seconds 90 --out bench/out/swarm.json

Each configuration starts a coordinator and peers as separate processes on loopback (the same
command lines a user runs), trains for --seconds, stops them with SIGTERM and reads each peer's
peer-summary.json: payload bytes it sent through hivemind's averaging, epochs (global steps),
samples, wall time and time spent in forward/backward.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cairn.peer.swarm import Service, cairn, start_loopback_coordinator, stop_services  # noqa: E402


def init_run(workdir: Path, *extra: str) -> None:
    if (workdir / "run.json").exists():
        return
    subprocess.run(cairn("coordinator", "init", "--workdir", str(workdir), "--run-id", "bench", *extra), check=True, capture_output=True)


def run_config(name: str, coordinator_dir: Path, peers: list[tuple[str, list[str]]], seconds: float, root: Path, compression: str) -> dict:
    """Train `peers` [(peer name, cpu list for taskset)] against a fresh coordinator process for `seconds`."""
    logs = root / "logs" / name
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    coordinator, join = start_loopback_coordinator(coordinator_dir, logs / "coordinator.log", env)
    services = [coordinator]
    try:
        for peer_name, cpus in peers:
            workdir = root / "peers" / peer_name  # reused across configurations: tokenizer cache, identity
            for stale in (workdir / "peer-summary.json",):
                stale.unlink(missing_ok=True)
            pin = ["taskset", "-c", ",".join(cpus)] if cpus else []
            peer = Service(
                peer_name,
                pin
                + cairn(
                    "peer",
                    "run",
                    "--join",
                    join,
                    "--name",
                    peer_name,
                    "--workdir",
                    str(workdir),
                    "--host",
                    "127.0.0.1",
                    "--torch-threads",
                    "1",
                    "--no-progress",
                    "--compression",
                    compression,
                    "--wait-for-peers",
                    str(len(peers)),
                    "--minutes",
                    str(seconds / 60),
                ),
                logs / f"{peer_name}.log",
            )
            peer.start(env)
            services.append(peer)
        for peer in services[1:]:
            peer.process.wait(timeout=seconds + 240)
    finally:
        stop_services(list(reversed(services)))
    summaries = [json.loads((root / "peers" / peer_name / "peer-summary.json").read_text()) for peer_name, _ in peers]
    epochs = max(s["epochs"] for s in summaries)
    return {
        "config": name,
        "peers": len(peers),
        "compression": compression,
        "averaging": summaries[0]["averaging"],
        "samples_per_second_total": sum(s["samples_per_second"] for s in summaries),
        "utilisation_mean": statistics.mean(s["utilisation"] for s in summaries),
        "global_steps": epochs,
        "bytes_sent_per_step_per_peer": statistics.mean(s["bytes_sent"] / max(s["epochs"], 1) for s in summaries),
        "bytes_received_per_step_per_peer": statistics.mean(s["bytes_received"] / max(s["epochs"], 1) for s in summaries),
        "rounds": [s["rounds"] for s in summaries],
        "wall_seconds": max(s["wall_seconds"] for s in summaries),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=90)
    parser.add_argument("--root", type=Path, default=Path("bench/out/swarm"))
    parser.add_argument("--out", type=Path, default=Path("bench/out/swarm.json"))
    parser.add_argument("--only", nargs="*", help="run only these configurations")
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    gradients = args.root / "run-gradients"
    local = args.root / "run-diloco"
    init_run(gradients, "--averaging", "gradients")
    init_run(local, "--averaging", "diloco")
    cores = [str(c) for c in sorted(os.sched_getaffinity(0))]
    two = [("peer-a", [cores[0]]), ("peer-b", [cores[-1]])]
    plan = [
        ("1 peer, 1 core, blockwise8", gradients, [("peer-a", [cores[0]])], "blockwise8"),
        ("2 peers, 1 core each, none", gradients, two, "none"),
        ("2 peers, 1 core each, fp16", gradients, two, "fp16"),
        ("2 peers, 1 core each, uniform8", gradients, two, "uniform8"),
        ("2 peers, 1 core each, blockwise8", gradients, two, "blockwise8"),
        ("2 peers, 1 core each, diloco", local, two, "blockwise8"),
    ]
    results = []
    for name, run_dir, peers, compression in plan:
        if args.only and name not in args.only:
            continue
        print(f"== {name}", flush=True)
        result = run_config(name.replace(" ", "_").replace(",", ""), run_dir, peers, args.seconds, args.root, compression)
        print(json.dumps(result), flush=True)
        results.append(result)
    args.out.write_text(json.dumps({"seconds": args.seconds, "load_average": os.getloadavg(), "results": results}, indent=2))
    print("| configuration | samples/s (all peers) | utilisation | global steps | MB sent per step per peer |")
    print("|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['config']} | {r['samples_per_second_total']:.0f} | {r['utilisation_mean']:.2f} | {r['global_steps']} | "
            f"{r['bytes_sent_per_step_per_peer'] / 1e6:.2f} |"
        )


if __name__ == "__main__":
    main()
