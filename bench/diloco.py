"""DiLoCo against per-step gradient averaging, at equal samples (issue 13, item 1): how many global steps between
outer rounds (H) the encoder tolerates, and what each mode puts on the wire per trained sample.

    .venv/bin/python bench/diloco.py --samples-per-peer 163840 --outer-every 4 16 64 --out bench/out/diloco.json

Each configuration is a fresh `cairn coordinator init` run on the embedded WordNet (README defaults otherwise:
static model, distilled start, batch 1024, target 2048, blockwise 8-bit on the wire) with two peers on loopback,
one core each, each training exactly --samples-per-peer samples. Held-out InfoNCE (batch 128, 1,024 held-out
pairs) of the shared state the peers keep is compared with the single-process trainer at the same total samples
(batch 1024, one update per batch: DiLoCo's inner step), and with the start release. The network here is free
(loopback): bytes per sample are what a shaped link would carry; utilisation on a home link is bench/shaped_network.py's.
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

from bench.common import heldout_loss  # noqa: E402
from cairn.peer.swarm import Service, cairn, start_loopback_coordinator, stop_services  # noqa: E402

CORPUS = "wordnet"


def run_swarm(name: str, root: Path, init_args: list[str], samples_per_peer: int, cores: list[str]) -> dict:
    """A fresh run with `init_args`, two peers training `samples_per_peer` each; their summaries and the shared state."""
    run = root / name
    coordinator_dir = run / "coordinator"
    if not (coordinator_dir / "run.json").exists():
        subprocess.run(
            cairn("coordinator", "init", "--workdir", str(coordinator_dir), "--run-id", f"bench-{name}", "--corpus", CORPUS, *init_args),
            check=True,
            capture_output=True,
        )
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    coordinator, join = start_loopback_coordinator(coordinator_dir, run / "coordinator.log", env)
    services = [coordinator]
    try:
        for index, core in enumerate(cores):
            peer_dir = run / "peers" / f"peer-{index}"
            (peer_dir / "peer-summary.json").unlink(missing_ok=True)
            peer = Service(
                f"peer-{index}",
                ["taskset", "-c", core]
                + cairn(
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
                    str(len(cores)),
                    "--max-samples",
                    str(samples_per_peer),
                ),
                peer_dir.with_suffix(".log"),
            )
            peer.start(env)
            services.append(peer)
        for peer in services[1:]:
            peer.process.wait(timeout=3600)
    finally:
        stop_services(list(reversed(services)))
    summaries = [json.loads((run / "peers" / f"peer-{i}" / "peer-summary.json").read_text()) for i in range(len(cores))]
    last = max(range(len(cores)), key=lambda i: summaries[i]["final_epoch"])
    return {"summaries": summaries, "state": run / "peers" / f"peer-{last}" / "state", "start": coordinator_dir / "releases" / "0.1.0"}


def baseline(root: Path, total: int, start: Path) -> float:
    from cairn.coordinator.cli import COMPAT_WEIGHT
    from cairn.protocol.run_config import TrainingConfig
    from cairn.training.trainer import train

    out = root / f"baseline-{total}"  # a second call resumes the finished run's checkpoint: nothing to train
    train(
        CORPUS,
        out,
        TrainingConfig(),
        max_samples=total,
        accumulate=1,
        evaluate=False,
        show_progress=False,
        compat_with=start,
        compat_weight=COMPAT_WEIGHT,
    )
    return heldout_loss(out, start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples-per-peer", type=int, default=163_840)
    parser.add_argument("--outer-every", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--root", type=Path, default=Path("bench/out/diloco"))
    parser.add_argument("--out", type=Path, default=Path("bench/out/diloco.json"))
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    cores = [str(c) for c in sorted(os.sched_getaffinity(0))][:2]
    cores = cores if len(cores) == 2 else cores * 2
    plan = [("gradients", ["--averaging", "gradients"])] + [
        (f"diloco-H{h}", ["--averaging", "diloco", "--outer-every", str(h)]) for h in args.outer_every
    ]
    rows, start = [], None
    for name, init_args in plan:
        print(f"== {name}", flush=True)
        result = run_swarm(name, args.root, init_args, args.samples_per_peer, cores)
        start = result["start"]
        summaries = result["summaries"]
        samples = sum(s["samples"] for s in summaries)
        row = {
            "config": name,
            "samples": samples,
            "outer_rounds_or_steps": max(s["final_epoch"] for s in summaries),
            "bytes_sent_per_sample": sum(s["bytes_sent"] for s in summaries) / samples,
            "utilisation": statistics.mean(s["utilisation"] for s in summaries),
            "samples_per_second": sum(s["samples_per_second"] for s in summaries),
            "heldout_loss": heldout_loss(result["state"], start),
            "rounds": [s["rounds"] for s in summaries],
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    total = rows[0]["samples"]
    reference = {"start_release": heldout_loss(start, start), "single_process": baseline(args.root, total, start)}
    args.out.write_text(
        json.dumps(
            {"samples_per_peer": args.samples_per_peer, "reference": reference, "rows": rows, "load_average": os.getloadavg()}, indent=2
        )
    )
    fp = rows[0]["bytes_sent_per_sample"]
    print(
        f"start release held-out loss {reference['start_release']:.3f}; single process at {total} samples {reference['single_process']:.3f}"
    )
    print(
        "| configuration | outer rounds / global steps | held-out loss | vs single process | bytes sent per sample | "
        "fewer bytes than per-step | utilisation (loopback) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['config']} | {r['outer_rounds_or_steps']} | {r['heldout_loss']:.3f} | "
            f"{100 * (r['heldout_loss'] / reference['single_process'] - 1):+.1f} % | {r['bytes_sent_per_sample']:.0f} | "
            f"{fp / r['bytes_sent_per_sample']:.1f}x | {r['utilisation']:.2f} |"
        )


if __name__ == "__main__":
    main()
