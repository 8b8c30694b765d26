"""The volunteer peer: join the run's DHT, check the run configuration, lease a shard, and train
with hivemind.Optimizer until told to stop.

Order matters here (see docs/benchmarks.md, "hivemind on CPU"): bitsandbytes is imported in the main
process before any averager forks; the DHT and the Optimizer are created in the main thread; every
peer seeds identically so a lone start is the same model everywhere; and on SIGINT/SIGTERM the peer
finishes its step, releases its lease, publishes a final record and shuts hivemind down.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import bitsandbytes.functional  # noqa: F401  (pitfall: lazy import inside averager threads crashes)
import hivemind
import torch
from hivemind.compression import Float16Compression
from hivemind.optim.grad_averager import GradientAverager

from protocol import PROTOCOL_VERSION
from protocol.encoder import Encoder, pick_device
from protocol.errors import CairnError
from protocol.run_config import RunConfig
from protocol.training import TrainingTask, encoder_config, reference_texts

from peer.instrumentation import RoundCounters, install_traffic_taps, make_compression, watch_rounds


@dataclass
class PeerOptions:
    join: list[str]
    workdir: Path
    name: str = "anonymous"
    device: str = "auto"
    identity: Path | None = None
    compression: str | None = None  # override the run's; none|fp16|uniform8|blockwise8
    client_mode: bool = False
    host: str = "0.0.0.0"
    port: int = 0
    batch_size: int | None = None
    metrics_port: int | None = None
    metrics_host: str = "0.0.0.0"
    max_samples: int | None = None  # stop after this many local samples (tests, benchmarks)
    max_minutes: float | None = None
    wait_for_peers: int = 1  # before the first step, wait (bounded) until this many trainers are visible
    progress: bool = True
    torch_threads: int | None = None


@dataclass
class PeerStats:
    samples: int = 0
    steps: int = 0
    loss: float = float("nan")
    started_at: float = field(default_factory=time.time)
    shards_completed: int = 0
    shard: int = -1
    last_probe: dict | None = None


class StopFlag:
    """Set by SIGINT/SIGTERM: the loop finishes its current step, then shuts down cleanly."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: self.event.set())

    def __bool__(self) -> bool:
        return self.event.is_set()


def make_optimizer(dht: hivemind.DHT, model: Encoder, config: RunConfig, batch_size: int, compression: str,
                   sent, received, key) -> hivemind.Optimizer:
    """hivemind.Optimizer with the measured settings (docs/benchmarks.md); must run in the main thread."""
    swarm, training = config.swarm, config.training
    grad_compression = make_compression(compression, sent, received)
    state_compression = make_compression("fp16" if compression != "none" else "none", sent, received)
    common = dict(
        dht=dht, run_id=config.run_id, target_batch_size=swarm.target_batch_size, batch_size_per_step=batch_size,
        params=model.parameters(),
        optimizer=partial(torch.optim.AdamW, lr=training.lr, weight_decay=training.weight_decay),
        scheduler=partial(torch.optim.lr_scheduler.LambdaLR,
                          lr_lambda=partial(_epoch_warmup, target=swarm.target_batch_size, training=training)),
        matchmaking_time=swarm.matchmaking_time, averaging_timeout=swarm.averaging_timeout,
        next_chunk_timeout=swarm.next_chunk_timeout, averager_opts=dict(request_timeout=swarm.request_timeout),
        state_averaging_compression=state_compression, load_state_compression=Float16Compression(),
        # hivemind keeps only the DHT's first signature validator: the tracker must sign with the same key
        tracker_opts=dict(private_key=key),
        verbose=False,
    )
    if swarm.local_updates:
        # DiLoCo-style: each peer applies its own updates; parameters are averaged once per epoch
        return hivemind.Optimizer(**common, use_local_updates=True, average_state_every=1)
    return hivemind.Optimizer(**common, grad_compression=grad_compression, average_state_every=swarm.average_state_every,
                              grad_averager_factory=partial(GradientAverager, request_timeout=swarm.request_timeout))


def _epoch_warmup(epoch: int, target: int, training) -> float:
    from protocol.training import warmup_factor_for_samples as factor

    return factor(epoch * target, training)


def run_peer(options: PeerOptions, stop: StopFlag | None = None) -> PeerStats:
    """Join, train until stopped (signal, max_samples or max_minutes), leave cleanly."""
    from peer.dht_util import check_reachable, make_dht
    from protocol.logs import quiet_hivemind_logs
    from protocol.identity import load_or_create_identity, peer_public_id
    from peer.leases import ShardLease
    from peer.metrics import create_peer_metrics, start_metrics_server
    from peer.records import publish_record
    from peer.run_setup import coordinator_peer_id, fetch_config, prepare_local_run
    from protocol.dht_keys import ContributionRecord, make_validators

    stop = stop if stop is not None else StopFlag()
    quiet_hivemind_logs()
    options.workdir.mkdir(parents=True, exist_ok=True)
    if options.torch_threads:
        torch.set_num_threads(options.torch_threads)
    device = pick_device(options.device)
    identity_path = options.identity or options.workdir / "identity.pem"
    key = load_or_create_identity(identity_path)
    public_id = peer_public_id(key)
    host_maddrs = [f"/ip4/{options.host}/tcp/{options.port}"]

    # the run id (and so the validators) is known only after asking the coordinator: a throwaway node first
    probe_dht = make_dht(options.join, validators=[], host_maddrs=["/ip4/127.0.0.1/tcp/0"], client_mode=True)
    try:
        config = fetch_config(probe_dht, coordinator_peer_id(options.join[0]))
    finally:
        probe_dht.shutdown()
    corpus, tokenizer, landmarks = prepare_local_run(config, options.workdir)
    dht = make_dht(options.join, validators=make_validators(config.run_id, key), host_maddrs=host_maddrs,
                   client_mode=options.client_mode, identity_path=identity_path)
    if not options.client_mode:
        reachability = check_reachable(dht)
        if not reachability:
            dht.shutdown()
            raise CairnError(f"this peer is not reachable from the swarm: {reachability.reason}")
    sent, received = mp.Value("q", 0), mp.Value("q", 0)
    install_traffic_taps(sent, received)
    rounds = RoundCounters()
    metrics = create_peer_metrics()
    watch_rounds(rounds, on_outcome=metrics.observe_round)
    metrics_server = start_metrics_server(options.metrics_port, metrics.registry, options.metrics_host) if options.metrics_port else None

    torch.manual_seed(config.training.seed)  # identical initial weights on every peer (pitfall 5)
    model = Encoder(encoder_config(config.training, tokenizer)).to(device)
    batch_size = options.batch_size or config.training.batch_size
    optimizer = make_optimizer(dht, model, config, batch_size, options.compression or config.swarm.compression, sent, received, key)
    stats = PeerStats()
    lease = ShardLease(dht, config.run_id, public_id, config.swarm.num_shards, lease_seconds=config.swarm.lease_seconds)
    try:
        _wait_for_swarm(optimizer, options.wait_for_peers, stop)
        if optimizer.tracker.global_epoch > optimizer.local_epoch:
            optimizer.load_state_from_peers()
        task = TrainingTask(model, tokenizer, landmarks, reference_texts(corpus, config.training.reference_size, config.training.seed),
                            config.training)
        model.train()
        _train_loop(options, config, corpus, task, optimizer, lease, stats, metrics, rounds, stop, dht, key, public_id, device,
                    batch_size, sent, received, publish_record, ContributionRecord)
    finally:
        lease.release()
        _save_local_state(model, options.workdir)
        optimizer.shutdown()
        dht.shutdown()
        if metrics_server is not None:
            metrics_server.stop()
    return stats


def _wait_for_swarm(optimizer: hivemind.Optimizer, expected: int, stop: StopFlag, timeout: float = 30.0) -> None:
    """Pitfall 6: two peers that both step alone at epoch 0 overshoot; wait (bounded) to see the others."""
    deadline = time.monotonic() + timeout
    while not stop and time.monotonic() < deadline:
        if optimizer.tracker.global_progress.num_peers >= expected:
            return
        time.sleep(0.5)


def _save_local_state(model: Encoder, workdir: Path) -> None:
    from protocol.encoder import save_encoder

    save_encoder(model, workdir / "state")


REPORT_EVERY_S = 3.0
RECORD_TTL_S = 60.0  # a record not refreshed within a minute means the peer is gone


def _train_loop(options, config, corpus, task, optimizer, lease, stats, metrics, rounds, stop, dht, key, public_id, device,
                batch_size, sent, received, publish_record, record_type) -> None:
    """The algorithm: take the next batch of the leased shard, compute the loss, let hivemind step."""
    from rich.progress import Progress, SpinnerColumn, TextColumn

    started = time.monotonic()
    shard, pairs, offset = None, [], 0
    last_report, epoch_seen = 0.0, optimizer.local_epoch
    samples_at_start_of_window, window_start = 0, time.monotonic()
    throughput = 0.0
    traffic_seen = (0, 0)  # averaging bytes already added to the counters
    line = TextColumn("{task.fields[text]}")
    with Progress(SpinnerColumn(), line, disable=not options.progress, transient=False) as progress:
        bar = progress.add_task("peer", text="joining", total=None)
        while not stop:
            if options.max_samples is not None and stats.samples >= options.max_samples:
                break
            if options.max_minutes is not None and time.monotonic() - started >= options.max_minutes * 60:
                break
            if shard is None or lease.lost:
                shard = lease.acquire()
                if shard is None:
                    progress.update(bar, text="no free shard; waiting for one")
                    stop.event.wait(2.0)
                    continue
                pairs, offset = corpus.shard(shard, config.swarm.num_shards), lease.progress(shard)
                stats.shard = shard
            batch_start = offset
            batch = [pairs[(offset + i) % len(pairs)] for i in range(batch_size)]
            loss, _ = task.loss(batch)
            loss.backward()
            step_started = time.monotonic()
            optimizer.step()
            optimizer.zero_grad()
            new_offset = offset + batch_size
            if new_offset >= len(pairs):
                stats.shards_completed += 1
            offset = new_offset % len(pairs)
            stats.samples += batch_size
            stats.steps += 1
            stats.loss = float(loss.detach())
            metrics.samples.inc(batch_size)
            metrics.steps.inc()
            metrics.loss.set(stats.loss)
            if optimizer.local_epoch != epoch_seen:
                metrics.allreduce_duration.observe(time.monotonic() - step_started)
                epoch_seen = optimizer.local_epoch
                if rounds.last_outcome == "success":  # after a failed round our parameters are our own: no claim
                    stats.last_probe = _probe(task, batch, shard, batch_start, epoch_seen)
            now = time.monotonic()
            if now - last_report >= REPORT_EVERY_S:
                throughput = (stats.samples - samples_at_start_of_window) / max(now - window_start, 1e-9)
                samples_at_start_of_window, window_start = stats.samples, now
                peers = optimizer.tracker.global_progress.num_peers
                metrics.bytes_sent.inc(sent.value - traffic_seen[0])
                metrics.bytes_received.inc(received.value - traffic_seen[1])
                traffic_seen = (sent.value, received.value)
                metrics.visible_peers.set(peers)
                metrics.global_step.set(optimizer.tracker.global_epoch)
                if not lease.renew():  # someone else holds it now: stop reading this shard
                    lease.save_progress(shard, offset)
                    shard = None
                else:
                    lease.save_progress(shard, offset)
                _publish(dht, config, key, public_id, stats, throughput, device, options, optimizer, publish_record, record_type)
                progress.update(bar, text=f"{options.name}: {throughput:6.1f} samples/s | global step {optimizer.tracker.global_epoch} | "
                                          f"peers {peers} | shard {shard} | loss {stats.loss:.3f}")
                last_report = now
        if shard is not None:
            lease.save_progress(shard, offset)
        _publish(dht, config, key, public_id, stats, throughput, device, options, optimizer, publish_record, record_type)


@torch.no_grad()
def _probe(task: TrainingTask, batch, shard: int, batch_start: int, epoch: int) -> dict:
    """Eval-mode loss on the batch just trained, right after an epoch's averaged update.

    It depends only on the shared parameters of `epoch`, so the coordinator can recompute it from the
    averaged state and spot-check this peer's claim.
    """
    return {"probe_epoch": epoch, "probe_shard": shard, "probe_offset": batch_start, "probe_count": len(batch),
            "probe_loss": task.eval_loss(batch, batch_size=len(batch))}


def _publish(dht, config, key, public_id, stats: PeerStats, throughput: float, device, options: PeerOptions, optimizer,
             publish_record, record_type) -> None:
    """Publish this peer's signed contribution record (owner-tagged subkey: nobody else can write it)."""
    probe = stats.last_probe or {"probe_epoch": -1, "probe_shard": -1, "probe_offset": 0, "probe_count": 0, "probe_loss": 0.0}
    loss = stats.loss if stats.loss == stats.loss else 0.0  # NaN before the first step
    record = record_type(
        display_name=options.name, peer_id=dht.peer_id.to_base58(), samples=stats.samples, steps=stats.steps,
        loss=float(loss), samples_per_second=float(max(throughput, 0.0)), device=device.type,
        uptime_seconds=float(time.time() - stats.started_at), shard=stats.shard, protocol_version=PROTOCOL_VERSION,
        reported_at=time.time(), epoch=int(optimizer.local_epoch), shards_completed=stats.shards_completed,
        **{k: (float(v) if k == "probe_loss" else int(v)) for k, v in probe.items()},
    )
    publish_record(dht, config.run_id, record, RECORD_TTL_S, identity=key)
