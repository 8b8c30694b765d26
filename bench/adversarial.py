"""One malicious peer of four (issue 12, attack 3): does robust aggregation keep the honest peers' run intact?

    nice -n 10 .venv/bin/python bench/adversarial.py --out bench/out/adversarial.json

Each row is a fresh `cairn coordinator init` run on the embedded WordNet (static model, distilled start, batch 256
per peer, target batch 2048, warm-up 4 updates, blockwise 8-bit on the wire) with four peers on loopback, two per
core, each training --samples-per-peer samples. In an attack row the fourth peer is bench/malicious_peer.py: every
gradient it shares is corrupted (NaN/Inf, x1e6, sign-flipped x1e6, or noise 1e3 x the gradient's scale), unclipped.
Reported per row: the held-out InfoNCE (batch 128, 1,024 held-out pairs) of the state an honest peer keeps, its
ratio to the clean row of the same rule, whether all three honest peers' parameters are finite, and throughput.
Rows `ATTACK@mean` run hivemind's own averaging: the benefit of the robust rule; `clean@mean` against `clean` is its
overhead, as is the in-process timing of one reducer's work per round printed first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import heldout_loss  # noqa: E402
from cairn.peer.swarm import Service, cairn, start_loopback_coordinator, stop_services  # noqa: E402

CORPUS = "wordnet"
PEERS = 4
MALICIOUS = PEERS - 1  # the last peer, in attack rows
MAX_MINUTES = 4.0  # per peer: 8,192 samples took 1.5-2.5 min of it on a loaded 2-core machine
HERE = Path(__file__).resolve().parent
# what fits 15 minutes on a 2-core machine; "scaled" (x1e6, not flipped) and "clean@mean" when there is time
DEFAULT_ROWS = ["clean", "nan_inf", "sign_flip", "noise", "sign_flip@mean"]


def run_row(row: str, root: Path, samples_per_peer: int, cores: list[str]) -> dict:
    """A fresh run for `row` ('ATTACK' or 'ATTACK@RULE'); the peers' summaries and exit codes."""
    attack, _, rule = row.partition("@")
    rule = rule or "centered_clip"
    run = root / row.replace("@", "-")
    coordinator_dir = run / "coordinator"
    if not (coordinator_dir / "run.json").exists():  # a copy of one initialised run per rule: init takes minutes here
        template = root / f"init-{rule}"
        if not (template / "run.json").exists():
            subprocess.run(
                cairn(
                    "coordinator",
                    "init",
                    "--workdir",
                    str(template),
                    "--run-id",
                    "adv-" + rule.replace("_", "-"),
                    "--corpus",
                    CORPUS,
                    "--batch-size",
                    "256",
                    "--warmup-updates",
                    "4",
                    "--aggregation",
                    rule,
                    "--averaging-timeout",
                    "30",
                    "--averaging",
                    "gradients",  # the rows of docs/benchmarks.md section 13 were measured on per-step rounds
                ),
                check=True,
                capture_output=True,
            )
        shutil.copytree(template, coordinator_dir)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    started = time.time()
    coordinator, join = start_loopback_coordinator(coordinator_dir, run / "coordinator.log", env)
    services = [coordinator]
    try:
        # the (would-be) malicious peer first: its start-up is the slowest, and a run it joins late is not attacked
        for index in sorted(range(PEERS), key=lambda i: i != MALICIOUS):
            peer_dir = run / "peers" / f"peer-{index}"
            (peer_dir / "peer-summary.json").unlink(missing_ok=True)
            peer_args = [
                "peer",
                "run",
                "--join",
                join,
                "--name",
                f"peer-{index}",
                "--workdir",
                str(peer_dir),
                "--host",
                "127.0.0.1",
                "--torch-threads",
                "1",
                "--no-progress",
                "--wait-for-peers",
                str(PEERS),
                "--max-samples",
                str(samples_per_peer),
                # a poisoned peer drops every batch (its gradient is NaN) and never reaches --max-samples
                "--minutes",
                str(MAX_MINUTES),
            ]
            if attack != "clean" and index == MALICIOUS:
                command = [sys.executable, str(HERE / "malicious_peer.py"), attack, *peer_args]
            else:
                command = cairn(*peer_args)
            peer = Service(f"peer-{index}", ["taskset", "-c", cores[index % len(cores)]] + command, peer_dir.with_suffix(".log"))
            peer.start(env)
            services.append(peer)
        for peer in services[1 : 1 + MALICIOUS]:  # the honest ones; the malicious peer may have crashed or may lag
            peer.process.wait(timeout=1800)
    finally:
        exit_codes = [peer.process.poll() for peer in services[1:]]
        stop_services(list(reversed(services)))
    summaries = []
    for index in range(PEERS):
        path = run / "peers" / f"peer-{index}" / "peer-summary.json"
        summaries.append(json.loads(path.read_text()) if path.exists() else None)
    return {
        "rule": rule,
        "attack": attack,
        "run": run,
        "summaries": summaries,
        "exit_codes": exit_codes,
        "wall_seconds": time.time() - started,
    }


def finite_state(state: Path) -> bool:
    """Whether every parameter of the encoder saved in `state` is finite."""
    import torch

    from cairn.protocol.encoder import load_encoder

    return all(bool(torch.isfinite(p).all()) for p in load_encoder(state).parameters())


def reducer_seconds(values: int = 30522 * 256 // PEERS, part: int = 2**19) -> dict[str, float]:
    """CPU seconds one reducer spends per round on its quarter of the static encoder (4 senders), by rule."""
    import torch

    from cairn.peer.aggregation import RULES

    torch.manual_seed(0)
    parts = [torch.randn(PEERS, min(part, values - start)) for start in range(0, values, part)]
    timings = {"mean": lambda x: x.mean(dim=0), **RULES}
    result = {}
    for name, rule in timings.items():
        began = time.process_time()
        for chunk in parts:
            rule(chunk)
        result[name] = time.process_time() - began
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples-per-peer", type=int, default=8192)
    parser.add_argument(
        "--rows",
        nargs="+",
        default=DEFAULT_ROWS,
        help="ATTACK or ATTACK@RULE; attacks: clean nan_inf scaled sign_flip noise; rules: centered_clip (default) trimmed_mean mean",
    )
    parser.add_argument("--root", type=Path, default=Path("bench/out/adversarial"))
    parser.add_argument("--out", type=Path, default=Path("bench/out/adversarial.json"))
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    began = time.time()
    import torch

    torch.set_num_threads(1)
    timing = reducer_seconds()
    print(
        "reducer CPU seconds per round (a quarter of the static encoder, 4 senders): "
        + ", ".join(f"{name} {seconds:.3f}" for name, seconds in timing.items()),
        flush=True,
    )
    cores = [str(c) for c in sorted(os.sched_getaffinity(0))][:2]
    rows = []
    for row in args.rows:
        print(f"== {row}", flush=True)
        result = run_row(row, args.root, args.samples_per_peer, cores)
        start = result["run"] / "coordinator" / "releases" / "0.1.0"
        honest = [i for i in range(PEERS) if result["attack"] == "clean" or i != MALICIOUS]
        states = [result["run"] / "peers" / f"peer-{i}" / "state" for i in honest]
        summaries = [s for s in result["summaries"] if s is not None]
        record = {
            "row": row,
            "rule": result["rule"],
            "attack": result["attack"],
            "heldout_loss": heldout_loss(states[0], start),
            "honest_finite": all(finite_state(state) for state in states),
            "exit_codes": result["exit_codes"],
            "global_steps": max((s["final_epoch"] for s in summaries), default=0),
            "samples_per_second": sum(s["samples_per_second"] for i, s in enumerate(result["summaries"]) if s and i in honest),
            "rounds": [s["rounds"] if s else None for s in result["summaries"]],
            "wall_seconds": result["wall_seconds"],
            # rounds the malicious peer averaged in: an attack row whose attacker never got into a round measured nothing
            "attacker_rounds": (result["summaries"][MALICIOUS] or {}).get("rounds", {}).get("success", 0),
            "rejections": _rejections(result["run"]),
        }
        print(json.dumps(record), flush=True)
        rows.append(record)
    start_loss = heldout_loss(start, start)
    args.out.write_text(
        json.dumps(
            {
                "samples_per_peer": args.samples_per_peer,
                "reducer_seconds": timing,
                "start_release": start_loss,
                "rows": rows,
                "wall_seconds": time.time() - began,
                "load_average": os.getloadavg(),
            },
            indent=2,
        )
    )
    clean = {r["rule"]: r["heldout_loss"] for r in rows if r["attack"] == "clean"}
    print(f"start release held-out loss {start_loss:.3f}; total {time.time() - began:.0f} s")
    print(
        "| malicious peer | rule | held-out loss | vs clean (same rule) | honest params finite | global steps | honest samples/s | "
        "rounds with peer 4 | honest log lines naming a peer |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        reference = clean.get(r["rule"], clean.get("centered_clip"))
        ratio = f"{r['heldout_loss'] / reference:.3f}" if reference and r["heldout_loss"] == r["heldout_loss"] else "n/a"
        print(
            f"| {r['attack']} | {r['rule']} | {r['heldout_loss']:.3f} | {ratio} | {'yes' if r['honest_finite'] else 'NO'} | "
            f"{r['global_steps']} | {r['samples_per_second']:.0f} | {r['attacker_rounds']} | {r['rejections']} |"
        )


def _rejections(run: Path) -> int:
    """Lines in the honest peers' logs where aggregation named a sender or reducer (cairn/peer/aggregation.py)."""
    count = 0
    for index in range(MALICIOUS):
        log = run / "peers" / f"peer-{index}.log"
        if log.exists():
            count += sum(
                "averaging: sender" in line or "averaging: reducer" in line for line in log.read_text(errors="replace").splitlines()
            )
    return count


if __name__ == "__main__":
    main()
