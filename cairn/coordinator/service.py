"""The coordinator's main loop: one asyncio program around a DHT node it created in the main thread.

Every `poll_seconds` it copies contribution records into the ledger; every `spot_check_seconds` it
loads the averaged state from peers (as an auxiliary peer that never trains; it serves the state it
last loaded to peers that join later), spot-checks the probe losses peers reported for that epoch, and cuts a release when R global
steps have passed or an operator asked for one (`cairn coordinator release` drops a request file).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import hivemind
import torch

from cairn.corpora import load_corpus
from cairn.protocol.dht_keys import RunKeys, decode_contributions
from cairn.protocol.encoder import build_encoder, config_for
from cairn.network.state_gate import HeldOutStateGate, gate_pairs
from cairn.protocol.epoch_bound import plausible_epoch_limit
from cairn.protocol.identity import load_or_create_identity
from cairn.protocol.landmarks import LANDMARKS_FILE, LandmarkSet
from cairn.coordinator.priority import run_at_low_priority
from cairn.protocol.run_config import RunConfig
from cairn.protocol.tokenizer import TextTokenizer
from cairn.training.task import TrainingTask, encoder_config, reference_texts, shared_optimizer_factories

from cairn.coordinator.landmark_versions import latest_landmarks, version_path
from cairn.coordinator.ledger import Ledger
from cairn.coordinator.metrics import CoordinatorMetrics
from cairn.coordinator.node import Backend, CoordinatorOptions, _connected_peers, join_addresses, save_known_peers, start_dht
from cairn.coordinator.releaser import ReleaseInputs, ReleaseRefused, cut_release, release_gate, state_is_finite
from cairn.coordinator.spot_checks import judge_probe, parameters_of, parameters_swapped
from cairn.protocol.workdir import CoordinatorState, Workdir

logger = logging.getLogger("cairn.coordinator")


class Coordinator:
    def __init__(self, options: CoordinatorOptions):
        import bitsandbytes.functional  # noqa: F401  (before any averager forks, as on peers)

        self.options = options
        self.workdir = Workdir(Path(options.workdir))
        self.config: RunConfig = self.workdir.load_run_config()
        self.key = load_or_create_identity(self.workdir.dht_key)
        self.ledger = Ledger(self.workdir.ledger)
        self.last_release_step = int(self.ledger.meta("last_release_step", "0"))
        if self.ledger.meta("trusted_epoch") is None:  # a workdir from before issue 12: trust what it had released
            self._trust_epoch(self.last_release_step)
        # kept in memory too: the RPC handler and the state loader read it outside the ledger's worker thread
        self._trusted = (int(self.ledger.meta("trusted_epoch", "0")), float(self.ledger.meta("trusted_epoch_at", "0")))
        self.corpus = load_corpus(self.config.corpus)
        max_len = config_for(self.config.training.model).max_len
        self.inputs = ReleaseInputs(
            self.config,
            self.corpus,
            TextTokenizer.load(self.workdir.run_dir, max_len),
            latest_landmarks(self.workdir),
            reference_texts(self.corpus, self.config.training.reference_size, self.config.training.seed),
            outside_reference=options.outside_reference,
        )
        self.dht = start_dht(self.workdir, self.config, options, self.key)
        self.join = join_addresses(self.dht, options.announce_host)
        self.repository_url = f"http://{options.announce_host or options.http_host}:{options.http_port}"
        torch.manual_seed(self.config.training.seed)
        self.model = build_encoder(encoder_config(self.config.training, self.inputs.tokenizer))
        self.state_loader = self._make_state_loader()  # main thread: hivemind requires it
        # spot checks recompute the training loss, which uses the run's own (v1) landmark set
        self.task = TrainingTask(
            self.model,
            self.inputs.tokenizer,
            LandmarkSet.load(self.workdir.run_dir / LANDMARKS_FILE),
            self.inputs.reference,
            self.config.training,
        )
        self.loaded_epoch = -1
        self._seen_epoch = -1
        self._epoch_changed_at: float | None = None
        self._last_records: dict = {}
        self._saved_peers: set[str] = set()  # the connected peers known_peers.json was last written for
        self.stopping: asyncio.Event | None = None
        # one worker thread for everything blocking (DHT calls, SQLite, state loading, releases):
        # ledger writes are serialised and the event loop keeps answering RPCs and HTTP meanwhile
        # (at normal priority: it also loads the averaged state; only a release's evaluation runs lowered)
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="coordinator-worker")
        self.metrics = CoordinatorMetrics()

    def _make_state_loader(self) -> hivemind.Optimizer:
        from cairn.network.trusted_state import BoundedOptimizer

        training, swarm = self.config.training, self.config.swarm
        optimizer, scheduler = shared_optimizer_factories(training, swarm)
        return BoundedOptimizer(
            # a donor declaring a global step beyond what the clock allows since the last one checked is skipped,
            # and the next donor asked (cairn/network/trusted_state.py); the check after each load stays, a second line
            epoch_limit=self._epoch_limit,
            # nor one that retrieves held-out pairs worse than the state it holds (cairn/network/state_gate.py)
            state_check=HeldOutStateGate(self.model, self.inputs.tokenizer, gate_pairs(self.corpus, swarm.num_shards)),
            dht=self.dht,
            run_id=self.config.run_id,
            target_batch_size=swarm.samples_per_epoch,
            auxiliary=True,
            # the peers' shared optimizer and schedule: hivemind unpacks a downloaded optimizer state into this one's structure
            params=self.model.parameters(),
            optimizer=optimizer,
            scheduler=scheduler,
            matchmaking_time=swarm.round_matchmaking_time,  # it joins the peers' state averaging rounds
            averaging_timeout=swarm.averaging_timeout,
            # it shares the last averaged state it loaded: a peer joining a swarm whose peers all left
            # would otherwise retry forever inside hivemind for a donor that no longer exists
            averager_opts=dict(request_timeout=swarm.request_timeout),
            # the wait for each chunk of a state download: without it hivemind waits request_timeout (0.5 s), and on a
            # loaded machine the coordinator's downloads timed out from every donor (a CI run of the kill-9 test); peers
            # use the same setting
            next_chunk_timeout=swarm.next_chunk_timeout,
            tracker_opts=dict(private_key=self.key),
            verbose=False,
        )

    # ---- the loop ---------------------------------------------------------------------------

    async def serve(self) -> None:
        from aiohttp import web

        from cairn.coordinator.publishing.repository import ReleaseRepository
        from cairn.coordinator.publishing.server import make_repository_app
        from cairn.protocol.rpc import CoordinatorService

        self.stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.stopping.set)
        repository = ReleaseRepository(self.workdir.root, passphrase=self.options.key_passphrase)
        repository.check_online_keys(logger.warning)
        for version in range(1, self.inputs.landmarks.version + 1):  # idempotent for versions already signed
            repository.publish_landmarks(version_path(self.workdir, version), version)
        repository.refresh_timestamp()
        p2p = await self.dht.replicate_p2p()
        await CoordinatorService(Backend(self.config, self.key, self.workdir, self.repository_url, self._epoch_limit)).add_p2p_handlers(p2p)
        app = make_repository_app(self.workdir.repository)
        app.router.add_get("/metrics", self.metrics.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, self.options.http_host, self.options.http_port).start()
        if self.options.metrics_port:
            metrics_app = web.Application()
            metrics_app.router.add_get("/metrics", self.metrics.handle)
            metrics_runner = web.AppRunner(metrics_app)
            await metrics_runner.setup()
            await web.TCPSite(metrics_runner, self.options.metrics_host, self.options.metrics_port).start()
        CoordinatorState(
            join=tuple(self.join), repository_url=self.repository_url, pid=os.getpid(), run_id=self.config.run_id, started_at=time.time()
        ).save(self.workdir.state_file)
        logger.info("coordinator of run %s at %s; releases at %s", self.config.run_id, self.join[0], self.repository_url)
        last_check, last_timestamp = 0.0, time.monotonic()
        try:
            while not self.stopping.is_set():
                try:
                    await loop.run_in_executor(self.worker, self.poll_once)
                    now = time.monotonic()
                    if now - last_check >= self.options.spot_check_seconds:
                        await loop.run_in_executor(self.worker, self.check_and_maybe_release)
                        last_check = time.monotonic()
                    if now - last_timestamp >= self.options.timestamp_refresh_seconds:
                        await loop.run_in_executor(self.worker, repository.refresh_timestamp)
                        last_timestamp = now
                except Exception as error:
                    # Ctrl+C in a terminal reaches the whole process group: p2pd exits with us, and the DHT call in
                    # flight fails. Stopping anyway; a traceback would only look like a crash.
                    if self.stopping.is_set():
                        logger.debug("a call in flight failed while stopping", exc_info=True)
                        break
                    # anything else (a record, a state or a DHT answer a peer shaped) is one failed round, never the end of
                    # the coordinator: a dead coordinator lets the timestamp expire and every client refuses the repository
                    logger.warning("this round failed, serving on: %r", error)
                    logger.debug("the failed round", exc_info=True)
                try:
                    await asyncio.wait_for(self.stopping.wait(), timeout=self.options.poll_seconds)
                except asyncio.TimeoutError:
                    pass
        finally:
            await runner.cleanup()
        logger.info("stopped on request")

    def _epoch_limit(self) -> int:
        """The highest global step the swarm can have reached now (cairn/protocol/epoch_bound.py); any thread."""
        return plausible_epoch_limit(*self._trusted, time.time())

    def _trust_epoch(self, epoch: int) -> None:
        now = time.time()
        self.ledger.set_meta("trusted_epoch", str(epoch))
        self.ledger.set_meta("trusted_epoch_at", str(now))
        self._trusted = (epoch, now)

    def poll_once(self) -> None:
        """Copy the live, owner-signed contribution records into the ledger (one transaction)."""
        found = self.dht.get(RunKeys(self.config.run_id).contributions, latest=True)
        records = decode_contributions(found.value if found is not None else None)
        tracker = self.state_loader.tracker
        global_epoch = min(tracker.global_epoch, self._epoch_limit())  # peers report it: an absurd one would lift the credit cap
        if global_epoch > self._seen_epoch:  # the swarm finished an averaging round since the last poll
            self._seen_epoch, self._epoch_changed_at = global_epoch, time.time()
        result = self.ledger.apply_poll(
            records, global_epoch, self.config.swarm.samples_per_epoch, last_allreduce_at=self._epoch_changed_at
        )
        self._last_records = records
        peers = set(self.dht.run_coroutine(_connected_peers))
        if peers and peers != self._saved_peers:  # write the file only when the set of peers changed
            save_known_peers(self.dht, self.workdir)
            self._saved_peers = peers
        self.metrics.global_step.set(global_epoch)
        self.metrics.peers_online.set(result.peers_online)
        self.metrics.credited_samples.set(result.credited)
        self.metrics.claimed_samples.set(result.claimed)
        logger.debug("poll: %s", result)

    def check_and_maybe_release(self) -> None:
        """Load the averaged state, spot-check claims for its epoch, cut a release when due."""
        global_epoch = self.state_loader.tracker.global_epoch
        if global_epoch <= 0:
            return
        # probes of the step held, published since the last check, are checked against the state held before it is
        # replaced. Without this, a probe reached the coordinator only if its step was still the swarm's at the next
        # check: with a round every few seconds almost none did (one check in a 60 s test run; none in a CI run)
        self._spot_check(self._last_records)
        if global_epoch <= self.loaded_epoch and not self.workdir.release_requested():
            # nothing new to load: the state of this step is held already. Downloading it again cost each check a whole
            # state (~50 MB) from some peer's uplink: measured, 9 loads in a 300 s DiLoCo run of 7 steps behind 50 Mbit/s
            # links, the largest share of the bytes peers sent besides averaging
            return
        # the state averager directly: the Optimizer's wrapper retries forever and may relabel the epoch. It is a
        # bounded one (cairn/network/trusted_state.py): a state beyond the epoch bound, not finite, or retrieving worse
        # than the one held is never applied, so what it holds after a load is safe to spot-check and release from
        averager = self.state_loader.state_averager
        try:
            averager.load_state_from_peers(timeout=30)  # returns nothing; success shows in local_epoch
        except Exception as error:  # no peer could serve its state right now: try at the next check
            logger.warning("could not load state from peers: %r", error)
            return
        if averager.local_epoch <= 0:
            return
        self.loaded_epoch = averager.local_epoch
        self._trust_epoch(self.loaded_epoch)
        self._spot_check(self._last_records)
        release_due = release_is_due(
            self.loaded_epoch, self.last_release_step, self.options.release_every, self.config.swarm.steps_per_epoch
        )
        requested = self.workdir.release_requested()
        if release_due or requested:
            try:
                gate = self._release_gate()
                # calibration and the promises' measurements are minutes of CPU on a small box: lowered, so peers
                # sharing the machine keep their averaging rounds (the worker waits; ledger use stays serialised)
                manifest = run_at_low_priority(
                    partial(
                        cut_release,
                        self.workdir,
                        self.inputs,
                        self.model,
                        self.loaded_epoch,
                        self.ledger,
                        gate=gate,
                        passphrase=self.options.key_passphrase,
                    )
                )
            except ReleaseRefused as error:
                logger.warning("no release at global step %s: %s", self.loaded_epoch, error)
                return
            self.ledger.set_meta("release_gate_loss", repr(gate["held_out_loss"]))
            self.last_release_step = self.loaded_epoch
            self.ledger.set_meta("last_release_step", str(self.loaded_epoch))
            self.workdir.clear_release_request()
            self.metrics.releases.inc()
            logger.info("released %s at global step %s", manifest.version, manifest.global_step)

    def _release_gate(self) -> dict:
        """Held-out loss of the loaded state against the last release's (cairn.coordinator.releaser.release_gate)."""
        if not state_is_finite(self.model):
            raise ReleaseRefused("the averaged state has non-finite parameters")
        pairs = gate_pairs(self.corpus, self.config.swarm.num_shards)
        previous = self.ledger.meta("release_gate_loss")
        return release_gate(self.task.eval_loss(pairs, batch_size=len(pairs)), None if previous is None else float(previous))

    def _spot_check(self, records: dict) -> None:
        """Recompute each probe loss reported for the loaded epoch from the shard samples it names."""
        for public_id, record in records.items():
            if (
                record.probe_epoch != self.loaded_epoch
                or record.probe_count <= 0
                or self.ledger.spot_checked(public_id, record.probe_epoch)
            ):
                continue
            if not 0 <= record.probe_shard < self.config.swarm.num_shards:
                self.ledger.record_spot_check(public_id, record.probe_epoch, record.probe_loss, math.inf, False)
                continue
            pairs = self.corpus.shard(record.probe_shard, self.config.swarm.num_shards)
            batch = [pairs[(record.probe_offset + i) % len(pairs)] for i in range(record.probe_count)]
            loaded = self.task.eval_loss(batch, batch_size=len(batch))
            verdict = judge_probe(record.probe_loss, loaded, partial(self._loss_on_own_state, record.peer_id, record.probe_epoch, batch))
            if verdict.on_own_state:
                logger.warning(
                    "spot check of %s at epoch %s: its probe (%.4f) matches the state it serves (%.4f), not the one loaded "
                    "(%.4f): an honest peer on a state of its own (a failed round, or a swarm split into groups), no credit taken back",
                    public_id,
                    record.probe_epoch,
                    record.probe_loss,
                    verdict.recomputed,
                    loaded,
                )
            self.ledger.record_spot_check(public_id, record.probe_epoch, record.probe_loss, verdict.recomputed, verdict.passed)
            self.metrics.spot_checks.labels(result="own_state" if verdict.on_own_state else "passed" if verdict.passed else "failed").inc()

    def _loss_on_own_state(self, peer_id: str, epoch: int, batch: list) -> float | None:
        """The probe recomputed on the state the peer serves now (cairn/coordinator/spot_checks.py), or None."""
        values = parameters_of(self.state_loader.state_averager.state_of(peer_id), epoch, self.model)
        if values is None:
            return None
        with parameters_swapped(self.model, values):
            return self.task.eval_loss(batch, batch_size=len(batch))

    def shutdown(self) -> None:
        try:
            self.state_loader.shutdown()
        finally:
            self.dht.shutdown()
            self.ledger.close()


def release_is_due(loaded_epoch: int, last_release_step: int, release_every: int, steps_per_epoch: int = 1) -> bool:
    """R global steps' worth of samples since the last release. Epochs count averaging rounds; under DiLoCo one is
    `steps_per_epoch` (--outer-every) global steps' worth, so R counts samples, not rounds: a DiLoCo run releases at
    the first outer round that passes R (at the defaults, every round), where counting rounds would make the README's
    5-minute swarm cut none. A swarm started again on the same workdir counts from step 0: measured from the old
    run's release step, no release would come until the new run passed it (issue 18)."""
    if not release_every:
        return False
    if loaded_epoch <= last_release_step // 2:  # a new run of the swarm (one step back is only a donor behind)
        last_release_step = 0
    return (loaded_epoch - last_release_step) * steps_per_epoch >= release_every


def run_coordinator(options: CoordinatorOptions) -> None:
    coordinator = Coordinator(options)
    try:
        asyncio.run(coordinator.serve())
    finally:
        coordinator.shutdown()
