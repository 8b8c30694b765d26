"""The README's main job, `cairn swarm --peers 2 --minutes 5`, under several swarm configurations side by side.

    nice -n 5 .venv/bin/python bench/readme_job.py --minutes 5 \
        --config "gradients=--averaging gradients" \
        --config "diloco=--averaging diloco --outer-every 128 --outer-lr 0.35" \
        --out bench/out/readme-job.json

Each configuration runs the whole job on a fresh workdir (ROOT/LABEL), one after another on the same machine, at the
job's `--release-every` (the command's default unless --release-every), and reports what a user of the job sees: how
many global steps and trained releases it made, the peers' throughput, bytes sent per trained sample, the last
release's quick-suite scores (from its manifest) and its held-out loss (absolute InfoNCE on 1,024 held-out WordNet
pairs, batch 128, as bench/shaped_network.py). Nothing is tuned here; the rows are the configurations given.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REPO = Path(__file__).resolve().parent.parent
TASKS = ("gloss_lemma_r10", "simlex_spearman", "wordsim_spearman", "bbc_probe_acc")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_job(workdir: Path, minutes: float, args: list[str], release_every: int | None) -> float:
    """`cairn swarm` on a fresh workdir; returns its wall seconds."""
    import shutil

    shutil.rmtree(workdir, ignore_errors=True)
    command = [sys.executable, "-m", "cairn.cli", "swarm", "--peers", "2", "--minutes", str(minutes), "--workdir", str(workdir), *args]
    if release_every is not None:
        command += ["--release-every", str(release_every)]
    log(" ".join(command[2:]))
    started = time.monotonic()
    with open(workdir.parent / f"{workdir.name}.log", "w") as output:
        subprocess.run(command, cwd=REPO, check=True, stdout=output, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    return time.monotonic() - started


def summarise(label: str, args: list[str], workdir: Path, wall: float) -> dict:
    from cairn.releases.manifest import read_manifest

    from bench.common import heldout_loss
    from cairn.protocol.workdir import Workdir

    coordinator = workdir / "coordinator"
    run = Workdir(coordinator).load_run_config()
    releases = sorted((coordinator / "releases").glob("*.*.*"), key=lambda p: tuple(int(x) for x in p.name.split(".")))
    manifests = [(path, read_manifest(path)) for path in releases]
    trained = [(path, m) for path, m in manifests if m.global_step > 0]
    peers = {path.name: json.loads((path / "peer-summary.json").read_text()) for path in sorted((workdir / "peers").iterdir())}
    samples = sum(p["samples"] for p in peers.values())
    row = {
        "label": label,
        "args": args,
        "wall_seconds": wall,
        "global_steps": max(p["final_epoch"] for p in peers.values()),
        "samples": samples,
        "samples_per_second_per_peer": sum(p["samples_per_second"] for p in peers.values()) / len(peers),
        "utilisation": sum(p["utilisation"] for p in peers.values()) / len(peers),
        "bytes_sent_per_sample": sum(p["bytes_sent"] for p in peers.values()) / max(samples, 1),
        "loss_first_last": [min(p["first_loss"] for p in peers.values()), min(p["last_loss"] for p in peers.values())],
        "releases": [{"version": str(m.version), "global_step": m.global_step} for _, m in manifests],
        "trained_releases": len(trained),
        "start_heldout": heldout_loss(releases[0], releases[0], run.corpus, run.training),
    }
    if trained:
        path, last = trained[-1]
        metrics = last.metrics["relational"]["full"]
        row["last_release"] = {
            "version": str(last.version),
            "global_step": last.global_step,
            "quick_suite": {task: metrics.get(task) for task in TASKS},
            "beats_yardstick": last.metrics.get("yardstick", {}).get("beats"),
            "heldout": heldout_loss(path, releases[0], run.corpus, run.training),
        }
    return row


def markdown(rows: list[dict]) -> str:
    lines = [
        "| configuration | global steps | trained releases | samples/s per peer | utilisation | bytes sent per sample "
        "| loss first → last | last release: R@10 / SimLex / WordSim / BBC | held-out loss: start → last release |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        last = r.get("last_release")
        scores = " / ".join(f"{last['quick_suite'][t]:.3f}" for t in TASKS) if last else "no trained release"
        held = f"{r['start_heldout']:.3f} → {last['heldout']:.3f}" if last else f"{r['start_heldout']:.3f} → —"
        lines.append(
            f"| {r['label']} (`{' '.join(r['args'])}`) | {r['global_steps']} | {r['trained_releases']} "
            f"| {r['samples_per_second_per_peer']:.0f} | {r['utilisation']:.2f} | {r['bytes_sent_per_sample']:,.0f} "
            f"| {r['loss_first_last'][0]:.2f} → {r['loss_first_last'][1]:.2f} | {scores} | {held} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--config", action="append", required=True, help="LABEL=ARGS: `cairn swarm` options of one row")
    parser.add_argument("--release-every", type=int, help="default: the command's own")
    parser.add_argument("--root", type=Path, default=REPO / "bench" / "out" / "readme-job")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "readme-job.json")
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in args.config:
        label, _, text = spec.partition("=")
        extra = shlex.split(text)
        workdir = args.root / label
        wall = run_job(workdir, args.minutes, extra, args.release_every)
        rows.append(summarise(label, extra, workdir, wall))
        args.out.write_text(json.dumps({"minutes": args.minutes, "rows": rows}, indent=2))
        log(f"{label}: done")
    print(markdown(rows))


if __name__ == "__main__":
    main()
