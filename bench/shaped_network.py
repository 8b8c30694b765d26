"""Home links: the swarm on a shaped network (issue 13, item 2). Root only.

    nice -n 10 .venv/bin/python bench/shaped_network.py --peers 4 --rate-mbit 50 --seconds 120 --out bench/out/shaped.json
    .venv/bin/python bench/shaped_network.py --cleanup     # remove namespaces left by a run that was SIGKILLed

The coordinator and every peer run in their own network namespace (bench/netns.py), joined by veth
pairs to a bridge in a hub namespace the benchmark creates; each peer's uplink and downlink are
rate-limited with tc tbf. There is NO delay emulation: netem is not in this kernel, so every link has
the rate of a home connection and the sub-millisecond latency of a veth. The coordinator's link is
not shaped (a server in a data centre). Addresses are 10.77.0.0/24, inside the namespaces only.

Side by side, same link, same number of peers, one fresh coordinator workdir each:
- `none`: per-step fp32 all-reduce of the gradients (`--compression none`);
- `blockwise8`: per-step all-reduce, blockwise 8-bit gradients (the run default);
- `diloco`: `cairn coordinator init --averaging diloco` — included automatically when this
  checkout's `cairn coordinator init --help` lists `--averaging`;
- `diloco-sync`, `diloco-overlap` (on request): the same init with the run's `outer_overlap` set to false / true
  in the copy's run.json (one init for both: the two differ in that one field, and an init takes 1-2 minutes).
- `+topk` after a DiLoCo mode: the same init with the run's `outer_topk` set to `--topk` (top-k pseudo-gradients with
  error feedback; `diloco-overlap,diloco-overlap+topk` measures it side by side with every value sent).
For each: utilisation (forward/backward time / wall time, peer-summary.json), samples, global steps,
averaging payload per sample (peer-summary.json bytes_sent) and bytes on the wire per sample (the
veth counters: everything a peer sent, DHT, state downloads and release pulls included), the peak
rate seen on any peer's link over 1 s windows, and the held-out loss of the final averaged state
against a single process (cairn.training.train) at the same samples and effective batch.

Cleanup: the namespaces are deleted on normal exit, on an exception, on SIGINT/SIGTERM (turned into
SystemExit so every `finally` runs) and at interpreter exit; after a SIGKILL, `--cleanup` removes the
benchmark's namespaces (cairnnet-<pid>-*) whose owning process is gone. Only PIDs this process
started are signalled (each service in its own process group, as `cairn swarm` does).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.netns import NetnsError, ShapedNetwork, cleanup_leftovers, unavailable_reason  # noqa: E402
from cairn.peer.swarm import Service, cairn, stop_services, wait_for_join_address  # noqa: E402

DHT_PORT, HTTP_PORT = 31337, 8000
MODES = ("none", "blockwise8", "diloco", "diloco-sync", "diloco-overlap")


def child_env() -> dict[str, str]:
    """The children run this checkout's cairn (not whatever the venv's editable install points at), one thread each."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def diloco_available() -> bool:
    result = subprocess.run(cairn("coordinator", "init", "--help"), capture_output=True, text=True, env=child_env())
    return result.returncode == 0 and re.search(r"--averaging\s", result.stdout) is not None  # not --averaging-timeout


def init_template(root: Path, name: str, args: list[str]) -> Path:
    """`cairn coordinator init` once per set of arguments (it takes ~1-2 min); each configuration copies the result."""
    template = root / f"template-{name}"
    stamp = template / "bench-init-args.json"
    if (template / "run.json").exists() and stamp.exists() and json.loads(stamp.read_text()) == args:
        return template
    shutil.rmtree(template, ignore_errors=True)
    result = subprocess.run(
        cairn("coordinator", "init", "--workdir", str(template), "--run-id", "shaped", *args),
        capture_output=True,
        text=True,
        env=child_env(),
    )
    if result.returncode != 0:
        raise SystemExit(f"shaped_network: coordinator init {' '.join(args)} failed: {(result.stderr or result.stdout).strip()[-400:]}")
    stamp.write_text(json.dumps(args))
    return template


class LinkSampler(threading.Thread):
    """Reads the hub's veth counters every `interval` s: totals and the highest 1-s rate per direction and node."""

    def __init__(self, net: ShapedNetwork, interval: float = 1.0):
        super().__init__(daemon=True)
        self.net, self.interval = net, interval
        self.stop_event = threading.Event()
        self.first = self.last = net.counters()
        self.series: list[tuple[float, dict]] = [(time.time(), self.first)]  # wall-clock time, counters
        self.peak_mbit: dict[str, dict[str, float]] = {node: {"up": 0.0, "down": 0.0} for node in self.first}

    def run(self) -> None:
        previous, at = self.first, time.monotonic()
        while not self.stop_event.wait(self.interval):
            try:
                now_counters, now = self.net.counters(), time.monotonic()
            except NetnsError:
                return
            for node, values in now_counters.items():
                for direction in ("up", "down"):
                    rate = (values[direction] - previous[node][direction]) * 8 / (now - at) / 1e6
                    self.peak_mbit[node][direction] = max(self.peak_mbit[node][direction], rate)
            previous, at, self.last = now_counters, now, now_counters
            self.series.append((time.time(), now_counters))

    def between(self, node: str, direction: str, start: float, end: float) -> int:
        """Bytes through `node`'s link in one direction between two wall-clock times (to the sampling interval)."""

        def at(moment: float) -> int:
            before = [c for t, c in self.series if t <= moment]
            return (before[-1] if before else self.series[0][1])[node][direction]

        return at(end) - at(start)

    def stop(self) -> dict[str, dict[str, int]]:
        self.stop_event.set()
        self.join(timeout=5)
        return {node: {d: self.last[node][d] - self.first[node][d] for d in ("up", "down")} for node in self.last}


def run_swarm_shaped(
    coordinator_dir: Path,
    workdir: Path,
    peers: int,
    rate_mbit: float,
    seconds: float,
    peer_args: list[str],
    cpus: list[int],
    coordinator_rate: float | None = None,
    churn: bool = False,
) -> dict:
    """A coordinator and `peers` peers, each in its own namespace behind a `rate_mbit` link, for `seconds` of training.
    Returns the peers' summaries, their link counters and the coordinator's join address.

    With `churn`, the last peer leaves (its own `--minutes` ends, as a volunteer stopping it) a third of the way in,
    and a newcomer, p{peers + 1}, joins half way and trains to the end: from the swarm's shared state, not the start."""
    names = [f"p{i + 1}" for i in range(peers + (1 if churn else 0))]
    rates = {name: rate_mbit for name in names}
    if coordinator_rate:
        rates["c"] = coordinator_rate
    net = ShapedNetwork(["c", *names], rates)
    logs = workdir / "logs"
    env = child_env()
    services: list[Service] = []
    sampler = None
    with net:
        try:
            started = time.time()
            host = net.address("c")
            coordinator = Service(
                "coordinator",
                net.exec_in("c")
                + cairn(
                    "coordinator",
                    "run",
                    "--workdir",
                    str(coordinator_dir),
                    "--host",
                    host,
                    "--port",
                    str(DHT_PORT),
                    "--http-host",
                    host,
                    "--http-port",
                    str(HTTP_PORT),
                ),
                logs / "coordinator.log",
            )
            coordinator.start(env)
            services.append(coordinator)
            announced = wait_for_join_address(coordinator_dir, coordinator, started, timeout=180)
            join = next((a for a in announced if f"/ip4/{host}/" in a), None)
            if join is None:
                raise RuntimeError(f"the coordinator announces {announced}, none at its namespace address {host}")
            sampler = LinkSampler(net)
            sampler.start()
            # (name, seconds after the first start, seconds of training, peers to wait for at the start line)
            schedule = [(name, 0.0, seconds, peers) for name in names[:peers]]
            if churn:
                schedule[-1] = (names[peers - 1], 0.0, seconds / 3, peers)
                schedule.append((names[peers], seconds / 2, seconds / 2, 1))
            first_start = time.monotonic()
            for index, (name, delay, train_seconds, wait_for) in enumerate(schedule):
                if delay:  # a timetable, not a condition: the newcomer joins at a fixed point of the run
                    time.sleep(max(0.0, first_start + delay - time.monotonic()))
                peer_dir = workdir / "peers" / name
                shutil.rmtree(peer_dir, ignore_errors=True)
                pin = ["taskset", "-c", str(cpus[index % len(cpus)])] if cpus else []
                service = Service(
                    name,
                    net.exec_in(name)
                    + pin
                    + cairn(
                        "peer",
                        "run",
                        "--join",
                        join,
                        "--name",
                        name,
                        "--workdir",
                        str(peer_dir),
                        "--host",
                        net.address(name),
                        "--torch-threads",
                        "1",
                        "--no-progress",
                        "--wait-for-peers",
                        str(wait_for),
                        "--minutes",
                        f"{train_seconds / 60:.4f}",
                        *peer_args,
                    ),
                    logs / f"{name}.log",
                )
                service.start(env)
                services.append(service)
            exit_codes = {}
            for service in services[1:]:
                try:
                    exit_codes[service.name] = service.process.wait(timeout=seconds + 300)
                except subprocess.TimeoutExpired:
                    exit_codes[service.name] = None
            traffic = sampler.stop()
        finally:
            if sampler is not None:
                sampler.stop_event.set()
            stop_services(list(reversed(services)))
    summaries, training_traffic = {}, {}
    for name in names:
        path = workdir / "peers" / name / "peer-summary.json"
        summaries[name] = json.loads(path.read_text()) if path.exists() else None
        if summaries[name]:  # the training session's window: it wrote the summary as it ended, wall_seconds after it began
            end = path.stat().st_mtime
            start = end - summaries[name]["wall_seconds"]
            training_traffic[name] = {d: sampler.between(name, d, start, end) for d in ("up", "down")}
    return {
        "join": join,
        "summaries": summaries,
        "traffic": traffic,
        "training_traffic": training_traffic,
        "peak_mbit": sampler.peak_mbit,
        "exit_codes": exit_codes,
        "addresses": {n: net.address(n) for n in ["c", *names]},
    }


def heldout_losses(
    coordinator_dir: Path,
    swarm_state: Path,
    total_samples: int,
    effective_batches: float,
    out: Path | None,
    shard: tuple[int, int] | None = None,
) -> dict:
    """Held-out loss (absolute InfoNCE on 1,024 held-out pairs, batch 128, as tests/test_swarm.py) of the swarm's final
    averaged state, of the start release, and (unless `out` is None) of one process trained from the same start on the
    same number of samples with the swarm's effective batch (accumulate = round(effective batches)); with `shard` (I, N)
    that process reads only every N-th training pair (what a swarm that never leaves its first shards reads)."""
    import torch

    from cairn.corpora import load_corpus
    from cairn.protocol.workdir import Workdir
    from cairn.protocol.embedder import load_bundle
    from cairn.protocol.encoder import load_encoder
    from cairn.training.task import TrainingTask, reference_texts
    from cairn.training.trainer import train

    # the swarm has stopped by now: the one process may use every core (a thread count changes its speed, not its result
    # beyond float rounding), which halves the wait for the longest baselines (~1M samples)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    run = Workdir(coordinator_dir).load_run_config()
    config = run.training
    start = coordinator_dir / "releases" / "0.1.0"
    corpus = load_corpus(run.corpus)
    heldout, batch = corpus.heldout[:1024], 128
    release = load_bundle(start, device="cpu")

    def loss(directory: Path) -> float:
        task = TrainingTask(
            load_encoder(directory), release.tokenizer, release.landmarks, reference_texts(corpus, config.reference_size), config
        )
        return task.eval_loss(heldout, batch_size=batch)

    if out is None:
        return {"start": loss(start), "swarm": loss(swarm_state), "chance": math.log(batch)}
    accumulate = max(1, round(effective_batches))
    shutil.rmtree(out, ignore_errors=True)
    train(
        run.corpus,
        out,
        config,
        max_samples=total_samples,
        accumulate=accumulate,
        evaluate=False,
        show_progress=False,
        compat_with=start,
        compat_weight=config.objective.compat_weight,
        shard=shard,
    )
    swarm, single = loss(swarm_state), loss(out)
    return {
        "start": loss(start),
        "swarm": swarm,
        "single_process": single,
        "accumulate": accumulate,
        "shard": list(shard) if shard else None,
        "ratio": swarm / single,
        "chance": math.log(batch),
    }


def global_step_gaps(summaries: dict) -> dict:
    """When the swarm reached each global step (the first peer to hold it) and the gaps between consecutive steps: the
    median gap is one round's length, the longest is the worst stall (issue 13: none longer than one outer round, also
    across a leave and a join). The first step is left out: it includes start-up and the start line."""
    reached: dict[int, float] = {}
    for summary in summaries.values():
        for at, epoch in summary.get("epoch_arrivals", []):
            reached[epoch] = min(at, reached.get(epoch, at))
    times = [reached[e] for e in sorted(reached)]
    gaps = [b - a for a, b in zip(times, times[1:])]
    if not gaps:
        return {"step_gaps_s": [], "median_step_gap_s": None, "longest_step_gap_s": None}
    return {"step_gaps_s": gaps, "median_step_gap_s": statistics.median(gaps), "longest_step_gap_s": max(gaps)}


def final_state(workdir: Path, summaries: dict) -> Path:
    """The saved state of the peer that reached the highest global step: the swarm's final shared state."""
    last = max(summaries, key=lambda n: summaries[n]["final_epoch"])
    return workdir / "peers" / last / "state"


def reevaluate(workdir: Path, effective_batches: float, baseline: bool = True, shard: tuple[int, int] | None = None) -> dict:
    """`heldout_losses` for a configuration that already ran (`--heldout-of`): another single-process twin (say the
    global batch, accumulate 4), or the swarm's loss alone for a run made with --no-baseline."""
    paths = sorted((workdir / "peers").glob("*/peer-summary.json"))
    if not paths or not (workdir / "coordinator" / "run.json").exists():
        raise SystemExit(f"shaped_network: {workdir} holds no finished configuration (ROOT/runs/NAME with peers/*/peer-summary.json)")
    summaries = {path.parent.name: json.loads(path.read_text()) for path in paths}
    samples = sum(s["samples"] for s in summaries.values())
    name = f"single-process-x{effective_batches:g}" + (f"-shard{shard[0]}of{shard[1]}" if shard else "")
    out = workdir / name if baseline else None
    state = final_state(workdir, summaries)
    return {"samples": samples, **heldout_losses(workdir / "coordinator", state, samples, effective_batches, out, shard)}


def summarise(mode: str, result: dict, rate_mbit: float) -> dict:
    summaries = {n: s for n, s in result["summaries"].items() if s}
    if not summaries:
        return {"mode": mode, "error": "no peer wrote a summary", "exit_codes": result["exit_codes"]}
    samples = sum(s["samples"] for s in summaries.values())
    epochs = max(s["final_epoch"] for s in summaries.values())
    peers_up = {n: t["up"] for n, t in result["traffic"].items() if n != "c"}
    peers_down = {n: t["down"] for n, t in result["traffic"].items() if n != "c"}
    compute = statistics.mean(s["compute_seconds"] for s in summaries.values())
    payload = sum(s["bytes_sent"] for s in summaries.values())
    return {
        "mode": mode,
        "peers_reporting": len(summaries),
        "contributed": sum(1 for s in summaries.values() if s["samples"] > 0),
        "exit_codes": result["exit_codes"],
        "samples": samples,
        "global_steps": epochs,
        "utilisation_mean": statistics.mean(s["utilisation"] for s in summaries.values()),
        "utilisation_min": min(s["utilisation"] for s in summaries.values()),
        "samples_per_second_total": sum(s["samples_per_second"] for s in summaries.values()),
        # the swarm's rate over the run: with +churn the per-peer rates above add up peers that ran a third or half of it
        "samples_per_second_swarm": samples / max(s["wall_seconds"] for s in summaries.values()),
        "payload_bytes_sent_per_sample": payload / max(samples, 1),
        "wire_bytes_sent_per_sample": sum(peers_up.values()) / max(samples, 1),
        "wire_bytes_sent_per_sample_training": sum(t["up"] for t in result["training_traffic"].values()) / max(samples, 1),
        "wire_bytes_received_per_sample": sum(peers_down.values()) / max(samples, 1),
        "payload_bytes_sent_per_step_per_peer": statistics.mean(s["bytes_sent"] / max(s["epochs"], 1) for s in summaries.values()),
        "compute_seconds_per_step_per_peer": compute / max(epochs, 1),
        "ideal_wire_seconds_per_step_per_peer": statistics.mean(s["bytes_sent"] / max(s["epochs"], 1) for s in summaries.values())
        / (rate_mbit * 1e6 / 8),
        "peak_link_mbit": max(max(v["up"], v["down"]) for n, v in result["peak_mbit"].items() if n != "c"),
        "effective_batches": samples / max(epochs, 1) / 1024,
        "rounds": {n: s["rounds"] for n, s in summaries.items()},
        **global_step_gaps(summaries),
        "rate_mbit": rate_mbit,
        "wall_seconds": max(s["wall_seconds"] for s in summaries.values()),
        "join": result["join"],
    }


def parse_modes(text: str, with_diloco: bool) -> list[str]:
    """Configurations: MODE, optionally `+churn` (one peer leaves, one joins), `+noquorum` (the run's
    `matchmaking_quorum` off: every round waits out the matchmaking time), `+topk` (a DiLoCo run's `outer_topk` set to
    --topk: top-k pseudo-gradients with error feedback) and `@RATE` (this configuration's link rate in
    Mbit/s instead of --rate-mbit: `diloco-overlap@10000` is the unshaped twin whose throughput the shaped one is held to)."""
    specs = (
        [m.strip() for m in text.split(",") if m.strip()]
        if text != "auto"
        else ["none", "blockwise8"] + (["diloco"] if with_diloco else [])
    )
    try:
        parsed = [parse_spec(m, 50.0) for m in specs]
    except ValueError:
        parsed = []
    if not parsed or any(mode not in MODES for mode, _, _, _ in parsed):
        raise SystemExit(
            f"shaped_network: --modes takes a comma list of {', '.join(MODES)} (or auto), each optionally followed by "
            f"+churn, +noquorum, +topk and @RATE_MBIT, got {text!r}"
        )
    if any(mode.startswith("diloco") for mode, _, _, _ in parsed) and not with_diloco:
        raise SystemExit("shaped_network: this checkout's `cairn coordinator init` has no --averaging; diloco is not available yet")
    return specs


def parse_spec(spec: str, default_rate: float) -> tuple[str, bool, float, bool]:
    """`blockwise8+churn+noquorum@50` -> ("blockwise8", True, 50.0, False): mode, churn, rate, quorum; no `@` ->
    default_rate. ValueError if the rate is no number."""
    name, _, rate = spec.partition("@")
    mode, *flags = name.split("+")
    if any(flag not in ("churn", "noquorum", "topk") for flag in flags) or ("topk" in flags and not mode.startswith("diloco")):
        return (name, False, default_rate, True)  # reported as an unknown mode
    return (mode, "churn" in flags, float(rate) if rate else default_rate, "noquorum" not in flags)


def set_swarm_settings(coordinator_dir: Path, **settings: object) -> None:
    """Write swarm settings into a copied init's run configuration (the fields two configurations differ in: an init
    takes 1-2 minutes, so one init serves both)."""
    import dataclasses

    from cairn.protocol.run_config import RunConfig

    path = coordinator_dir / "run.json"
    config = RunConfig.from_json_bytes(path.read_bytes())
    lacking = [name for name in settings if not hasattr(config.swarm, name)]
    if lacking:
        raise SystemExit(f"shaped_network: this checkout has no {', '.join(lacking)} setting")
    path.write_bytes(dataclasses.replace(config, swarm=dataclasses.replace(config.swarm, **settings)).to_json_bytes())


def _shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and 0 <= int(index) < int(count)):
        raise argparse.ArgumentTypeError(f"{text!r} is not I/N with 0 <= I < N (e.g. 0/4)")
    return int(index), int(count)


def _raise_exit(signum, frame) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--rate-mbit", type=float, default=50.0, help="each peer's uplink and downlink rate (tc tbf)")
    parser.add_argument("--seconds", type=float, default=120.0, help="training time of each configuration")
    parser.add_argument("--modes", default="auto", help="comma list of none, blockwise8, diloco; auto = all this checkout has")
    parser.add_argument("--init-args", default="", help="extra `cairn coordinator init` options for every configuration")
    parser.add_argument("--diloco-args", default="", help="extra init options for diloco (e.g. its inner-step count)")
    parser.add_argument("--topk", type=float, default=0.016, help="the outer_topk of +topk configurations (Covenant-72B's 1.6 %%)")
    parser.add_argument("--coordinator-rate-mbit", type=float, default=None, help="shape the coordinator's link too")
    parser.add_argument("--no-baseline", action="store_true", help="skip the single-process held-out loss comparison")
    parser.add_argument(
        "--heldout-of",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="only the held-out comparison of a finished configuration (ROOT/runs/NAME), then exit",
    )
    parser.add_argument(
        "--effective-batches",
        type=float,
        default=1.0,
        help="with --heldout-of: batches of 1,024 per update of its single process (1: DiLoCo's inner step; 4: 4 peers' global batch)",
    )
    parser.add_argument(
        "--baseline-shard",
        type=_shard,
        default=None,
        metavar="I/N",
        help="with --heldout-of: its single process reads only shard I of N (every N-th training pair)",
    )
    parser.add_argument("--root", type=Path, default=Path("bench/out/shaped"))
    parser.add_argument("--out", type=Path, default=Path("bench/out/shaped.json"))
    parser.add_argument("--cleanup", action="store_true", help="remove namespaces left by benchmark runs whose process is gone, then exit")
    args = parser.parse_args()

    if args.heldout_of is not None:
        print(json.dumps(reevaluate(args.heldout_of, args.effective_batches, not args.no_baseline, args.baseline_shard)))
        return
    if args.cleanup:
        removed = cleanup_leftovers()
        print(f"removed {len(removed)} namespace(s){': ' + ', '.join(removed) if removed else ''}")
        return
    if not 1 <= args.peers <= 64:
        raise SystemExit(f"shaped_network: --peers must be 1-64, got {args.peers}")
    if not 0.1 <= args.rate_mbit <= 100_000:
        raise SystemExit(f"shaped_network: --rate-mbit must be 0.1-100000, got {args.rate_mbit}")
    if args.seconds < 10:
        raise SystemExit(f"shaped_network: --seconds must be at least 10, got {args.seconds}")
    reason = unavailable_reason()
    if reason:
        raise SystemExit(f"shaped_network: {reason}")
    signal.signal(signal.SIGTERM, _raise_exit)
    signal.signal(signal.SIGINT, _raise_exit)

    modes = parse_modes(args.modes, diloco_available())
    args.root.mkdir(parents=True, exist_ok=True)
    init_args = shlex.split(args.init_args)
    cpus = sorted(os.sched_getaffinity(0))
    results = []
    for spec in modes:
        mode, churn, rate_mbit, quorum = parse_spec(spec, args.rate_mbit)
        if mode.startswith("diloco"):
            template = init_template(args.root, "diloco", [*init_args, "--averaging", "diloco", *shlex.split(args.diloco_args)])
            peer_args: list[str] = []
        else:
            template = init_template(args.root, "gradients", [*init_args, "--averaging", "gradients"])
            peer_args = ["--compression", mode]
        workdir = args.root / "runs" / spec.replace("@", "-at-").replace("+", "-")
        shutil.rmtree(workdir, ignore_errors=True)
        coordinator_dir = workdir / "coordinator"
        shutil.copytree(template, coordinator_dir)
        settings: dict[str, object] = {} if quorum else {"matchmaking_quorum": False}
        if mode in ("diloco-sync", "diloco-overlap"):
            settings["outer_overlap"] = mode == "diloco-overlap"
        if "topk" in spec.partition("@")[0].split("+")[1:]:
            settings["outer_topk"] = args.topk
        if settings:
            set_swarm_settings(coordinator_dir, **settings)
        print(f"== {spec}: {args.peers} peers at {rate_mbit:g} Mbit/s up and down, {args.seconds:g} s", flush=True)
        raw = run_swarm_shaped(
            coordinator_dir, workdir, args.peers, rate_mbit, args.seconds, peer_args, cpus, args.coordinator_rate_mbit, churn=churn
        )
        row = summarise(spec, raw, rate_mbit)
        row["spot_checks"] = spot_check_outcomes(coordinator_dir / "ledger.sqlite")
        # an @RATE twin is there for its throughput: its held-out loss would cost a single-process run and say nothing new
        if not args.no_baseline and "error" not in row and "@" not in spec:
            summaries = {n: s for n, s in raw["summaries"].items() if s}
            # DiLoCo's peers update once per batch of 1,024 (the inner step): its single process does too; the per-step
            # modes update once per global step, so theirs accumulates the swarm's effective batch
            row["heldout"] = heldout_losses(
                coordinator_dir,
                final_state(workdir, summaries),
                row["samples"],
                1.0 if mode.startswith("diloco") else row["effective_batches"],
                workdir / "single-process",
            )
        print(json.dumps(row), flush=True)
        results.append(row)
        document = {
            "peers": args.peers,
            "rate_mbit": args.rate_mbit,
            "seconds": args.seconds,
            "cpus": cpus,
            "delay_emulation": None,
            "load_average": os.getloadavg(),
            "results": results,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=2))  # after every configuration: a later failure keeps these
    print_table(document)


def spot_check_outcomes(ledger: Path) -> dict:
    """The coordinator's spot checks of the run, from its ledger: every peer here is honest, so a failed check is a
    peer judged on a state other than the one it trained on (a failed round, a split swarm: docs/benchmarks.md §10)."""
    import sqlite3

    if not ledger.exists():
        return {"passed": 0, "failed": 0, "forfeited_samples": 0}
    db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        passed, failed = db.execute("SELECT COALESCE(SUM(passed = 1), 0), COALESCE(SUM(passed = 0), 0) FROM spot_checks").fetchone()
        (forfeited,) = db.execute("SELECT COALESCE(SUM(forfeited_samples), 0) FROM peers").fetchone()
    finally:
        db.close()
    return {"passed": int(passed), "failed": int(failed), "forfeited_samples": int(forfeited)}


def print_table(document: dict) -> None:
    print(f"\n{document['peers']} peers, {document['seconds']:g} s each, no delay emulation")
    print(
        "| configuration | link Mbit/s | utilisation (mean, min) | samples | global steps | payload B/sample | "
        "wire B sent/sample: training (whole run) | peak Mbit/s | samples/s | step gap s: median, longest | "
        "held-out loss: swarm / single process (start) | spot checks passed / all (credit taken back) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in document["results"]:
        if "error" in r:
            print(f"| {r['mode']} | error: {r['error']} |")
            continue
        held = r.get("heldout")
        loss = f"{held['swarm']:.3f} / {held['single_process']:.3f} ({held['start']:.3f}), ratio {held['ratio']:.3f}" if held else "—"
        gaps = f"{r['median_step_gap_s']:.0f}, {r['longest_step_gap_s']:.0f}" if r.get("median_step_gap_s") else "—"
        spot = r.get("spot_checks")
        checks = f"{spot['passed']} / {spot['passed'] + spot['failed']} ({spot['forfeited_samples']:,})" if spot else "—"
        print(
            f"| {r['mode']} | {r.get('rate_mbit', document['rate_mbit']):g} | {r['utilisation_mean']:.2f}, {r['utilisation_min']:.2f} | "
            f"{r['samples']:,} | {r['global_steps']} | {r['payload_bytes_sent_per_sample']:,.0f} | "
            f"{r['wire_bytes_sent_per_sample_training']:,.0f} ({r['wire_bytes_sent_per_sample']:,.0f}) | "
            f"{r['peak_link_mbit']:.1f} | {r['samples_per_second_swarm']:,.0f} | {gaps} | {loss} | {checks} |"
        )
    for line in kept_throughput(document["results"]):
        print(line)


def kept_throughput(results: list[dict]) -> list[str]:
    """Each shaped configuration's samples/s over its @RATE twin's in the same run: the share of its unshaped throughput it
    keeps behind the link (issue 13's utilisation), and wire bytes against per-step fp32's in the same run."""
    rows = {r["mode"]: r for r in results if "error" not in r}
    lines = []
    for spec, row in rows.items():
        base = spec.partition("@")[0]
        for other, twin in rows.items():
            if other != spec and other.partition("@")[0] == base and "@" in other and "@" not in spec:
                share = row["samples_per_second_swarm"] / twin["samples_per_second_swarm"]
                lines.append(f"- {spec} keeps {share:.0%} of the throughput of {other} ({twin['rate_mbit']:g} Mbit/s)")
    fp32 = rows.get("none")
    for spec, row in rows.items():
        if fp32 is not None and spec != "none" and "@" not in spec:
            ratio = fp32["wire_bytes_sent_per_sample_training"] / row["wire_bytes_sent_per_sample_training"]
            lines.append(
                f"- {spec}: {ratio:.{0 if ratio >= 10 else 1}f}x fewer wire bytes per trained sample than per-step fp32 (none) in this run"
            )
    return lines


if __name__ == "__main__":
    main()
