"""The volunteer peer: join the run's DHT, check the run configuration, lease a shard, and train
with hivemind.Optimizer until told to stop.

Order matters here (see docs/benchmarks.md, "hivemind on CPU"): bitsandbytes is imported in the main
process before any averager forks; the DHT and the Optimizer are created in the main thread; every
peer seeds identically so a lone start is the same model everywhere; and on SIGINT/SIGTERM the peer
finishes its step, releases its lease, publishes a final record and shuts hivemind down.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import bitsandbytes.functional  # noqa: F401  (pitfall: lazy import inside averager threads crashes)
import hivemind
import torch
from hivemind.averaging.control import AveragingStage

from cairn.protocol import PROTOCOL_VERSION
from cairn.protocol.encoder import TextEncoder, build_encoder, load_encoder, pick_device
from cairn.protocol.errors import CairnError
from cairn.protocol.run_config import RunConfig
from cairn.training.task import (
    CollapseDetector,
    TrainingTask,
    encoder_config,
    optimizer_factory,
    reference_texts,
    scheduler_factory,
    shared_optimizer_factories,
)

from cairn.peer.aggregation import install_aggregation
from cairn.peer.compression import install_wire_formats, make_state_compression
from cairn.peer.deadlines import expect_group, follow_round_deadline
from cairn.peer.diloco import OverlappedOuterOptimizer, PeerGradientAverager, overlap_options
from cairn.peer.gradients import sanitize_gradients
from cairn.peer.start_barrier import wait_for_peers
from cairn.peer.state_sync import StateSync, catch_up, watch_state_sync
from cairn.network.state_gate import HeldOutStateGate, gate_pairs
from cairn.network.trusted_state import BoundedOptimizer, CoordinatorEpochBound, EpochLimit, StateCheck
from cairn.peer.instrumentation import CountingCompression, RoundCounters, install_traffic_taps, make_compression, watch_rounds

if TYPE_CHECKING:
    from multiprocessing.sharedctypes import Synchronized

logger = logging.getLogger("cairn.peer")


@dataclass
class PeerOptions:
    join: list[str]
    workdir: Path
    name: str = "anonymous"
    device: str = "auto"
    identity: Path | None = None
    compression: str | None = None  # override the run's; none|fp16|uniform8|blockwise8|sparse8
    client_mode: bool = False
    host: str = "0.0.0.0"
    port: int = 0
    batch_size: int | None = None
    micro_batch: int | None = None  # texts per forward pass (GradCache chunks); None: sized from free GPU memory, whole batch on CPU
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
        self.installed = False

    def install(self) -> None:
        self.installed = True
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: self.event.set())

    def reinstall(self) -> None:
        """hivemind's averagers set SIGINT to ignored in this process when they start (so that their forked
        children ignore Ctrl+C): take it back after creating them, or Ctrl+C would do nothing."""
        if self.installed:
            self.install()

    def __bool__(self) -> bool:
        return self.event.is_set()


def make_optimizer(
    dht: hivemind.DHT,
    params: list[torch.nn.Parameter],
    config: RunConfig,
    batch_size: int,
    compression: str,
    sent,
    received,
    key,
    epoch_limit: EpochLimit | None = None,
    state_check: StateCheck | None = None,
) -> hivemind.Optimizer:
    """hivemind.Optimizer over the shared parameters with the measured settings (docs/benchmarks.md); must run in
    the main thread. `params` are the model's own (per-step gradients) or a separate outer copy (DiLoCo).
    `epoch_limit`: the highest global step to believe, from the coordinator; `state_check`: what a downloaded state
    must pass before it is loaded (cairn/network/trusted_state.py, state_gate.py)."""
    swarm, training = config.swarm, config.training
    install_wire_formats()  # the reducers' replies too, not only what this peer sends
    install_aggregation(swarm.aggregation)  # before the averagers fork: they keep the reducer installed now
    diloco = swarm.averaging == "diloco"
    # parameters in fp16, Adam's statistics in fp32, DiLoCo's outer momentum in fp16 (make_state_compression says why)
    statistics = "fp16" if diloco else "none"
    state_compression = CountingCompression(
        make_state_compression("fp16" if compression != "none" else "none", statistics if compression != "none" else "none"), sent, received
    )
    optimizer, scheduler = shared_optimizer_factories(training, swarm)
    overlap = diloco and swarm.outer_overlap
    # an overlapped outer round: hivemind's delayed all-reduce and outer step, made safe for DiLoCo (cairn/peer/diloco.py)
    optimizer_class, overlap_kwargs = (
        (OverlappedOuterOptimizer, overlap_options(swarm.request_timeout, swarm.outer_topk)) if overlap else (BoundedOptimizer, {})
    )
    return optimizer_class(
        epoch_limit=epoch_limit or (lambda: None),
        state_check=state_check,
        dht=dht,
        run_id=config.run_id,
        target_batch_size=swarm.samples_per_epoch,
        batch_size_per_step=batch_size,
        # explicitly: hivemind 1.1.12 leaves Optimizer.client_mode None when not given, while its averagers take the DHT's
        # True; the optimizer then sets a state-sharing priority on a client-mode averager, which raises ValueError
        client_mode=dht.client_mode,
        params=params,
        optimizer=optimizer,
        # per-step gradients: hivemind steps the scheduler once per global epoch, lr_factor(epoch), the trainer's curve
        # update by update. DiLoCo: none here, the peer steps its inner schedule itself (cairn/peer/diloco.py)
        scheduler=scheduler,
        matchmaking_time=swarm.round_matchmaking_time,
        averaging_timeout=swarm.averaging_timeout,
        next_chunk_timeout=swarm.next_chunk_timeout,
        averager_opts=dict(request_timeout=swarm.request_timeout),
        # what goes on the wire every epoch: the gradient, or DiLoCo's pseudo-gradient
        grad_compression=make_compression(compression, sent, received),
        average_state_every=swarm.average_state_every,
        **(
            overlap_kwargs
            or dict(grad_averager_factory=partial(PeerGradientAverager, request_timeout=swarm.request_timeout, topk=swarm.outer_topk))
        ),
        state_averaging_compression=state_compression,
        load_state_compression=make_state_compression("fp16", statistics),
        # DiLoCo writes its pseudo-gradient into the outer parameters' .grad, which hivemind then averages as is. The
        # optimizer stays offloaded (hivemind's default): only then does a lone peer's outer step see the pseudo-gradient
        # divided by hivemind's accumulation count (without offloading, that path steps on the raw .grad buffers)
        reuse_grad_buffers=diloco,
        # hivemind keeps only the DHT's first signature validator: the tracker must sign with the same key
        tracker_opts=dict(private_key=key),
        verbose=False,
    )


def make_steps(model: TextEncoder, optimizer: hivemind.Optimizer, params: list[torch.nn.Parameter], config: RunConfig):
    """The peer's step strategy for the run's averaging mode (cairn/peer/diloco.py)."""
    from cairn.peer.diloco import DiLoCoSteps, GradientSteps, OverlappedDiLoCoSteps

    if config.swarm.averaging != "diloco":
        return GradientSteps(model, optimizer)
    inner = optimizer_factory(config.training)(model.parameters())
    steps_class = OverlappedDiLoCoSteps if config.swarm.outer_overlap else DiLoCoSteps
    return steps_class(model, optimizer, params, inner, scheduler_factory(config.training)(inner))


def run_peer(options: PeerOptions, stop: StopFlag | None = None) -> PeerStats:
    """Join, train until stopped (signal, max_samples or max_minutes), leave cleanly."""
    from cairn.peer.dht_util import check_reachable, make_dht
    from cairn.peer.leases import ShardLease
    from cairn.peer.metrics import RoundOutcome, create_peer_metrics, start_metrics_server
    from cairn.peer.records import shards_in_use
    from cairn.peer.sizing import micro_batch
    from cairn.peer.run_setup import coordinator_peer_id, fetch_config, latest_release_weights, prepare_local_run
    from cairn.protocol.dht_keys import make_validators, owner_subkey
    from cairn.protocol.identity import load_or_create_identity
    from cairn.network.logs import quiet_hivemind_logs

    stop = stop if stop is not None else StopFlag()
    quiet_hivemind_logs()
    options.workdir.mkdir(parents=True, exist_ok=True)
    if options.torch_threads:
        torch.set_num_threads(options.torch_threads)
    device = pick_device(options.device)
    identity_path = options.identity or options.workdir / "identity.pem"
    key = load_or_create_identity(identity_path)

    # the run id (and so the validators) is known only after asking the coordinator: a throwaway node first
    probe_dht = make_dht(options.join, validators=[], host_maddrs=["/ip4/127.0.0.1/tcp/0"], client_mode=True)
    try:
        coordinator = coordinator_peer_id(options.join[0])
        config = fetch_config(probe_dht, coordinator)
        swarm = config.swarm
        logger.info(
            "run %s: %s averaging (%s), %s samples per global step, %s aggregation",
            config.run_id,
            swarm.averaging,
            f"an outer round every {swarm.outer_every} global steps"
            + (", overlapped with the next inner steps" if swarm.outer_overlap else "")
            if swarm.averaging == "diloco"
            else "every global step",
            f"{swarm.target_batch_size:,}",
            swarm.aggregation,
        )
        corpus, tokenizer, landmarks = prepare_local_run(config, options.workdir)
        # before the optimizer exists, since it copies the parameters it starts from
        release_dir = latest_release_weights(probe_dht, coordinator, options.workdir) if config.init == "release" else None
    finally:
        probe_dht.shutdown()
    dht = make_dht(
        options.join,
        validators=make_validators(config.run_id, key),
        host_maddrs=[f"/ip4/{options.host}/tcp/{options.port}"],
        client_mode=options.client_mode,
        identity_path=identity_path,
    )
    if not options.client_mode:
        reachability = check_reachable(dht)
        if not reachability:
            dht.shutdown()
            raise CairnError(f"this peer is not reachable from the swarm: {reachability.reason}")
    traffic = Traffic(mp.Value("q", 0), mp.Value("q", 0))
    install_traffic_taps(traffic.sent, traffic.received)
    rounds = RoundCounters()
    metrics = create_peer_metrics()
    sync = StateSync()  # whether this peer's shared state is the swarm's (cairn/peer/state_sync.py)

    def observe_round(outcome: RoundOutcome, seconds: float) -> None:
        metrics.observe_round(outcome, seconds)
        sync.round_ended(outcome)

    watch_rounds(rounds, on_outcome=observe_round)
    watch_state_sync(sync)
    metrics_server = start_metrics_server(options.metrics_port, metrics.registry, options.metrics_host) if options.metrics_port else None

    torch.manual_seed(config.training.seed)  # identical initial weights on every peer (pitfall 5)
    model = build_encoder(encoder_config(config.training, tokenizer)).to(device)
    if release_dir is not None:
        model.load_state_dict(load_encoder(release_dir).state_dict())
    batch_size = options.batch_size or config.training.batch_size
    from cairn.peer.diloco import outer_parameters

    params = outer_parameters(model) if config.swarm.averaging == "diloco" else list(model.parameters())
    # the highest global step to believe from other peers: the coordinator's bound (cairn/network/trusted_state.py)
    epoch_bound = CoordinatorEpochBound(dht, coordinator)
    epoch_bound.refresh()
    optimizer = make_optimizer(
        dht,
        params,
        config,
        batch_size,
        options.compression or config.swarm.wire_compression,
        traffic.sent,
        traffic.received,
        key,
        epoch_limit=epoch_bound.limit,
        # and a downloaded state must retrieve held-out pairs about as well as the one this peer holds
        state_check=HeldOutStateGate(model, tokenizer, gate_pairs(corpus, config.swarm.num_shards)),
    )
    steps = make_steps(model, optimizer, params, config)
    sync.expected_peers = lambda: optimizer.tracker.global_progress.num_peers
    partial_rounds = getattr(optimizer.grad_averager, "partial_rounds", None)
    if partial_rounds is not None:
        sync.partial_rounds = lambda: int(partial_rounds.value)
    stop.reinstall()
    lease = ShardLease(
        dht,
        config.run_id,
        owner_subkey(key),  # the DHT's own signing key: only this peer can write its leases
        config.swarm.num_shards,
        lease_seconds=config.swarm.lease_seconds,
        shards_in_use=partial(shards_in_use, dht, config.run_id),
    )  # a holder that trains on nothing is a squatter
    session = None
    try:
        task = TrainingTask(
            model, tokenizer, landmarks, reference_texts(corpus, config.training.reference_size, config.training.seed), config.training
        )
        parent = None
        if config.training.objective.compat_weight > 0:
            from cairn.peer.compat_parent import ParentTracker

            parent = ParentTracker(dht, coordinator, options.workdir, device, task)
            parent.maybe_refresh(wait=True)
        chunk = micro_batch(task, corpus.train, batch_size, options.micro_batch)
        # Wait for the others last, when nothing slow is left before the first step: the parent release's pull took 12 s
        # and more on a 20 Mbit/s link, so peers that waited first started stepping seconds apart, the first one met the
        # target alone, its round found no group, and the other spent the run downloading the state it fell behind
        # (tests/test_shaped_network.py failed so in 3 of 5 runs). The wait is a real barrier (cairn/peer/start_barrier.py):
        # hivemind's tracker does not show peers before their first samples, so a wait on it always ran its 30 s.
        # The shard is leased before the barrier, and kept through the wait: two peers racing for one shard take a
        # settle time or two to sort it out, seconds apart again after a barrier they left together (one CI run)
        lease.acquire()
        with lease.renewing():
            wait_for_peers(
                dht,
                config.run_id,
                key,
                options.wait_for_peers,
                running_peers=lambda: optimizer.tracker.global_progress.num_peers,
                stopped=lambda: bool(stop),
            )
        if optimizer.tracker.global_epoch > optimizer.local_epoch:
            optimizer.load_state_from_peers()  # a late joiner starts from the swarm's averaged state
            steps.shared_state_into_model()
        session = TrainingSession(
            options,
            config,
            corpus,
            task,
            optimizer,
            steps,
            lease,
            dht,
            key,
            device,
            batch_size,
            metrics,
            rounds,
            traffic,
            stop,
            parent,
            micro_batch=chunk,
            epoch_bound=epoch_bound,
            sync=sync,
        )
        session.run()
    finally:
        lease.release()
        # what this peer keeps is the swarm's shared state, not a half-finished inner round; unless the outer round in
        # flight did not land before leaving: then it is the previous round's, and the summary says so
        if not steps.leave():
            sync.diverged = True
            logger.warning("the outer round in flight did not land before leaving: the saved state is the previous round's")
        _save_local_state(model, options.workdir)
        optimizer.shutdown()
        dht.shutdown()
        if metrics_server is not None:
            metrics_server.stop()
        if session is not None:
            session.write_summary()
    return session.stats if session is not None else PeerStats()


def _save_local_state(model: TextEncoder, workdir: Path) -> None:
    from cairn.protocol.encoder import save_encoder

    save_encoder(model, workdir / "state")


@dataclass
class Traffic:
    """Averaging payload bytes, counted in the averager processes (shared memory counters)."""

    sent: Synchronized[int]
    received: Synchronized[int]


REPORT_EVERY_S = 3.0
RECORD_TTL_S = 60.0  # a record not refreshed within a minute means the peer is gone
SUMMARY_FILE = "peer-summary.json"
LEAVE_GRACE_S = 5.0  # how long past the matchmaking time a leaving peer waits for its formed group's round
# batches whose losses the summary keeps from the start: about a peer's share of its first global step in the tests' swarms
OPENING_BATCHES = 4


class TrainingSession:
    """The training loop of one peer and the bookkeeping around it (lease, records, metrics)."""

    def __init__(
        self,
        options: PeerOptions,
        config: RunConfig,
        corpus,
        task: TrainingTask,
        optimizer: BoundedOptimizer,
        steps,
        lease,
        dht: hivemind.DHT,
        key,
        device: torch.device,
        batch_size: int,
        metrics,
        rounds: RoundCounters,
        traffic: Traffic,
        stop: StopFlag,
        parent=None,
        micro_batch: int | None = None,
        epoch_bound: CoordinatorEpochBound | None = None,
        sync: StateSync | None = None,
    ):
        self.options, self.config, self.corpus, self.task = options, config, corpus, task
        self.steps = steps  # cairn.peer.diloco: GradientSteps or DiLoCoSteps
        self.optimizer, self.lease, self.dht, self.key, self.device = optimizer, lease, dht, key, device
        self.batch_size, self.metrics, self.rounds, self.traffic, self.stop = batch_size, metrics, rounds, traffic, stop
        self.parent = parent  # cairn.peer.compat_parent.ParentTracker when the run has a compat weight, else None
        self.micro_batch = micro_batch or batch_size  # texts per forward pass (cairn/peer/sizing.py)
        self.epoch_bound = epoch_bound  # asked again in the background (cairn/network/trusted_state.py)
        self.sync = sync or StateSync()  # whether the shared state is the swarm's: probes and DiLoCo's catch-up
        self.stats = PeerStats()
        self.shard: int | None = None
        self.pairs: list = []
        self.offset = 0
        self.throughput = 0.0
        self.traffic_seen = (0, 0)
        self.compute_seconds = 0.0  # forward + backward: what utilisation divides by wall time
        # the losses of the first OPENING_BATCHES batches (the first is the summary's first_loss): one batch of 32
        # varies by more than a few epochs of training change it, so whether a newcomer started from the swarm's state
        # is read from their mean
        self.opening_losses: list[float] = []
        self.collapse = CollapseDetector()
        self.epochs_at_start = optimizer.local_epoch
        self.started = time.monotonic()
        self.leaving_since: float | None = None  # when a stop or a limit came while this peer's group waited on it
        # (wall-clock time, global step) each time this peer's shared state moved on: how long rounds took, and the
        # longest stall around a peer leaving or joining, read across peers by bench/shaped_network.py
        self.epoch_arrivals: list[tuple[float, int]] = []
        self.shards_read: list[int] = []  # every shard this peer read, in the order it first did

    def run(self) -> None:
        """The algorithm: take the next batch of the leased shard, compute the loss, let hivemind step."""
        from rich.progress import Progress, SpinnerColumn, TextColumn

        self.task.model.train()
        last_report, epoch_seen = 0.0, self.optimizer.local_epoch
        window = (0, time.monotonic())
        with Progress(SpinnerColumn(), TextColumn("{task.fields[text]}"), disable=not self.options.progress) as progress:
            bar = progress.add_task("peer", text="joining", total=None)
            while self._going_on():
                if not self._ensure_shard():
                    progress.update(bar, text="no free shard; waiting for one")
                    self.stop.event.wait(2.0)
                    continue
                batch_start, batch = self.offset, self._next_batch()
                computing = time.monotonic()
                parts = self.task.backward(batch, self.micro_batch)  # the whole batch's loss, in chunks that fit
                self.compute_seconds += time.monotonic() - computing
                if not sanitize_gradients(self.task.model.parameters()):  # never share a NaN: drop the batch, not the peer
                    logger.warning("dropped a batch whose gradient is not finite (shard %s, offset %s)", self.shard, batch_start)
                    self.task.model.zero_grad(set_to_none=True)
                    continue
                self._watch_collapse(len(batch), parts)
                stepping, rounds_ended = time.monotonic(), self.rounds.total()
                # wait for a round as long as the averager's adaptive deadline lets it run (cairn/peer/deadlines.py)
                follow_round_deadline(self.optimizer, self.config.swarm.averaging_timeout, self.config.swarm.round_matchmaking_time)
                expect_group(self.optimizer, self.config.swarm.matchmaking_quorum)  # and start a group once it is whole
                self.steps.step()
                self.sync.follow_downloads(self.optimizer.state_averager.applied_downloads)  # fell behind, downloaded
                # the absolute InfoNCE: comparable with the baseline and the spot checks, chance level ln(batch)
                self._count(batch, parts["abs"])
                epoch_changed = self.optimizer.local_epoch != epoch_seen
                if epoch_changed:
                    self.metrics.allreduce_duration.observe(time.monotonic() - stepping)
                    epoch_seen = self.optimizer.local_epoch
                    self.epoch_arrivals.append((time.time(), epoch_seen))
                    self.steps.after_new_epoch()
                probing = self.steps.probe_point(epoch_changed, self.rounds.total() != rounds_ended)  # the epoch's shared state
                if catch_up(self.optimizer, self.steps, self.sync):  # DiLoCo, after a failed round: the swarm's state
                    probing = None  # the probe was taken for the state this peer had before
                # no claim on a state nobody else holds: right after a round alone or failed, and until synchronised
                if probing is not None and self.rounds.last_outcome == "success" and not self.sync.diverged:
                    assert self.shard is not None  # _ensure_shard() leased the shard this batch came from
                    with probing:
                        self.stats.last_probe = _probe(self.task, batch, self.shard, batch_start, self.optimizer.local_epoch)
                now = time.monotonic()
                if now - last_report >= REPORT_EVERY_S:
                    self.throughput = (self.stats.samples - window[0]) / max(now - window[1], 1e-9)
                    window, last_report = (self.stats.samples, now), now
                    self._report()
                    if self.parent is not None:
                        self.parent.maybe_refresh()
                    if self.epoch_bound is not None:
                        self.epoch_bound.maybe_refresh()
                    progress.update(bar, text=self._status_line())
        if self.shard is not None:
            self.lease.save_progress(self.shard, self.offset)
        self._publish()

    def _watch_collapse(self, batch_size: int, parts: dict) -> None:
        """One warning in the log when the encoder collapses (and the flag in every record while it lasts)."""
        was = self.collapse.collapsed
        if self.collapse.observe(batch_size, parts["abs"], parts["mean_cos"]) and not was:
            logger.warning(self.collapse.warning(batch_size, parts["abs"], parts["mean_cos"]))

    def _going_on(self) -> bool:
        """Train on until stopped or a limit is reached; then on until the round this peer's group formed for has
        run, for at most `LEAVE_GRACE_S` beyond the round's matchmaking time.

        A round's group forms (hivemind pre-schedules its matchmaking) a matchmaking time before the swarm's samples
        reach the global step. A peer that leaves then joins that round with weight zero (hivemind's
        `Optimizer.shutdown`): its groupmates' round counts a success with it, they apply a step of their own
        gradients alone, and this peer keeps the state before that step. Two peers stopped together ended a global
        step apart that way (20 against 21, in a CI run of the two-peer test). Stepping on to the round instead
        puts this peer's samples in it and leaves every groupmate on the same step; a round still looking for its
        group is cancelled at shutdown, as before."""
        if not self.stop and not self._limit_reached():
            return True
        scheduled = getattr(self.optimizer, "scheduled_grads", None)
        if scheduled is None or scheduled.done() or scheduled.stage != AveragingStage.AWAITING_TRIGGER:
            return False
        if self.leaving_since is None:
            self.leaving_since = time.monotonic()
            logger.info("leaving after the averaging round this peer's group has formed for")
        return time.monotonic() - self.leaving_since < self.config.swarm.round_matchmaking_time + LEAVE_GRACE_S

    def _limit_reached(self) -> bool:
        if self.options.max_samples is not None and self.stats.samples >= self.options.max_samples:
            return True
        return self.options.max_minutes is not None and time.monotonic() - self.started >= self.options.max_minutes * 60

    def _ensure_shard(self) -> bool:
        moved = self.lease.take_move(self.offset) if self.shard is not None else None
        if moved is not None:
            self._read_shard(moved)
        if self.shard is None or self.lease.lost:
            shard = self.lease.acquire()
            if shard is None:
                self.shard = None
                return False
            self._read_shard(shard)
        return True

    def _read_shard(self, shard: int) -> None:
        """Read `shard` from where its holders stopped (the offset counts samples read; it never wraps)."""
        self.shard = self.stats.shard = shard
        if shard not in self.shards_read:
            self.shards_read.append(shard)
        self.pairs = self.corpus.shard(shard, self.config.swarm.num_shards)
        self.offset = self.lease.progress(shard)

    def _next_batch(self) -> list:
        size, start = len(self.pairs), self.offset % len(self.pairs)
        batch = [self.pairs[(start + i) % size] for i in range(self.batch_size)]
        passes = self.offset // size
        self.offset += self.batch_size
        if self.offset // size > passes:  # a whole pass over the shard: read the least-read free one next
            self.stats.shards_completed += 1
            self.lease.start_moving()
        return batch

    def _count(self, batch: list, loss: float) -> None:
        self.stats.samples += len(batch)
        self.stats.steps += 1
        self.stats.loss = loss
        if len(self.opening_losses) < OPENING_BATCHES:
            self.opening_losses.append(loss)
        self.metrics.samples.inc(len(batch))
        self.metrics.steps.inc()
        self.metrics.loss.set(loss)

    def _report(self) -> None:
        """Every few seconds: metrics, lease renewal and progress, the signed contribution record."""
        sent, received = self.traffic.sent.value, self.traffic.received.value
        self.metrics.bytes_sent.inc(sent - self.traffic_seen[0])
        self.metrics.bytes_received.inc(received - self.traffic_seen[1])
        self.traffic_seen = (sent, received)
        self.metrics.visible_peers.set(self.optimizer.tracker.global_progress.num_peers)
        self.metrics.global_step.set(self.optimizer.tracker.global_epoch)
        if not self.lease.renew(offset=self.offset):  # someone else holds it now: stop reading this shard
            self.shard = None
        self._publish()

    def _status_line(self) -> str:
        return (
            f"{self.options.name}: {self.throughput:6.1f} samples/s | global step {self.optimizer.tracker.global_epoch} | "
            f"peers {self.optimizer.tracker.global_progress.num_peers} | shard {self.stats.shard} | loss {self.stats.loss:.3f}"
        )

    def _publish(self) -> None:
        """Publish this peer's signed contribution record (owner-tagged subkey: nobody else can write it)."""
        from cairn.peer.records import build_record, publish_record

        probe = self.stats.last_probe or {"probe_epoch": -1, "probe_shard": -1, "probe_offset": 0, "probe_count": 0, "probe_loss": 0.0}
        loss = self.stats.loss if self.stats.loss == self.stats.loss else 0.0  # NaN before the first step
        record = build_record(
            display_name=self.options.name,
            peer_id=self.dht.peer_id.to_base58(),
            samples=self.stats.samples,
            steps=self.stats.steps,
            loss=float(loss),
            samples_per_second=float(max(self.throughput, 0.0)),
            device=self.device.type,
            uptime_seconds=float(time.time() - self.stats.started_at),
            shard=self.stats.shard,
            protocol_version=PROTOCOL_VERSION,
            reported_at=time.time(),
            epoch=int(self.optimizer.local_epoch),
            shards_completed=self.stats.shards_completed,
            collapsed=self.collapse.collapsed,
            **{k: (float(v) if k == "probe_loss" else int(v)) for k, v in probe.items()},
        )
        if record is not None:
            publish_record(self.dht, self.config.run_id, record, RECORD_TTL_S, identity=self.key)

    def write_summary(self) -> None:
        """What this peer did, for benchmarks and tests: samples, epochs, bytes, utilisation, losses."""
        from cairn.protocol.fsutil import atomic_write_json

        wall = time.monotonic() - self.started
        epochs = self.optimizer.local_epoch - self.epochs_at_start
        feedback = getattr(self.optimizer.grad_averager, "error_feedback", None)
        atomic_write_json(
            self.options.workdir / SUMMARY_FILE,
            {
                "name": self.options.name,
                "samples": self.stats.samples,
                "steps": self.stats.steps,
                "wall_seconds": wall,
                "compute_seconds": self.compute_seconds,
                "utilisation": self.compute_seconds / wall if wall else 0.0,
                "samples_per_second": self.stats.samples / wall if wall else 0.0,
                "epochs": epochs,
                "start_epoch": self.epochs_at_start,
                "final_epoch": self.optimizer.local_epoch,
                "first_loss": self.opening_losses[0] if self.opening_losses else None,
                "opening_losses": self.opening_losses,
                "micro_batch": self.micro_batch,
                "last_loss": self.stats.loss,
                "bytes_sent": self.traffic.sent.value,
                "bytes_received": self.traffic.received.value,
                "bytes_sent_per_epoch": self.traffic.sent.value / epochs if epochs else None,
                "rounds": self.rounds.snapshot(),
                "group_sizes": self.rounds.sizes(),
                "epoch_arrivals": self.epoch_arrivals,
                "shards_completed": self.stats.shards_completed,
                "shards_read": self.shards_read,
                "compression": self.options.compression or self.config.swarm.wire_compression,
                "averaging": self.config.swarm.averaging,
                "compat_parent": self.parent.version if self.parent is not None else None,
                "collapsed": self.collapse.collapsed,
                # donors skipped and states refused for an epoch beyond the coordinator's bound, or not finite
                "refused_state_downloads": self.optimizer.refused_downloads,
                # downloads of the swarm's state right after a failed round, and whether the run ended on a state of
                # its own (no probe since: cairn/peer/state_sync.py)
                "state_catch_ups": self.sync.catch_ups,
                "state_diverged": self.sync.diverged,
                # --outer-topk: the L2 norm of what this peer computed and has not sent yet (bounded in a healthy run;
                # cairn/peer/error_feedback.py); None when the run sends every value
                "topk_held_norm": feedback.held_norm() if feedback is not None else None,
            },
        )


@torch.no_grad()
def _probe(task: TrainingTask, batch, shard: int, batch_start: int, epoch: int) -> dict:
    """Eval-mode loss on the batch just trained, right after an epoch's averaged update.

    It depends only on the shared parameters of `epoch`, so the coordinator can recompute it from the
    averaged state and spot-check this peer's claim.
    """
    return {
        "probe_epoch": epoch,
        "probe_shard": shard,
        "probe_offset": batch_start,
        "probe_count": len(batch),
        "probe_loss": task.eval_loss(batch, batch_size=len(batch)),
    }
