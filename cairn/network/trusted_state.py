"""State a node downloads and progress it believes: nothing beyond the epoch bound (issue 12, attack 1).

hivemind trusts what peers declare about epochs. Its progress tracker takes the highest epoch any peer reports as
the swarm's global step. Its state download picks the donor with the highest declared state-sharing priority (a
peer's epoch) and adopts whatever epoch that donor's metadata names. So one peer declaring epoch 10^9 with a
tampered state became every joiner's donor: the joiner ran on the tampered weights, and every honest peer,
believing itself 10^9 steps behind, downloaded state at every step instead of training.

The classes here take an `epoch_limit` callable, the highest global step the swarm can honestly have reached now
(cairn/protocol/epoch_bound.py; None: no bound known, hivemind's behaviour):
- `BoundedProgressTracker` leaves reports beyond the bound out of the global progress;
- `BoundedStateAverager` skips donors that declare more, refuses a downloaded state whose epoch is beyond the bound
  or whose tensors are not finite, and tries the next donor (hivemind stops at the first that answers);
- `BoundedOptimizer` is hivemind.Optimizer built with both. Peers take the bound from the coordinator (RPC,
  `cairn.protocol.rpc.fetch_epoch_bound`); the coordinator from its own ledger.

A state within the bound but tampered is not caught here: the coordinator's spot checks and release gate are what
stand between it and a release (docs/operating.md).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import math
import multiprocessing as mp
import time
from functools import partial
from typing import Any, Callable, Collection, Mapping, Sequence

import hivemind
import torch
from hivemind.optim.progress_tracker import GlobalTrainingProgress, ProgressTracker
from hivemind.averaging.averager import DecentralizedAverager
from hivemind.optim.state_averager import TrainingStateAverager
from hivemind.utils import MPFuture

from cairn.network.hivemind_contract import hivemind_wire_name

logger = logging.getLogger(__name__)

EpochLimit = Callable[[], "int | None"]
# (downloaded parameters, the parameters this node holds) -> why the download must not be loaded, or None
StateCheck = Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor]], "str | None"]
MAX_DONORS_PER_LOAD = 3  # donors asked in one load before giving up until the next: each costs a whole download
DONOR_KEY = "cairn_donor"  # added to a download's metadata in the averager's process: hivemind ignores other keys


def _no_bound() -> int | None:
    return None


def believable_progress(metadata: Any, limit: int | None) -> Any:
    """The tracker's progress entries without those reporting an epoch beyond `limit`."""
    if limit is None or not isinstance(metadata, Mapping):
        return metadata
    kept = {}
    for subkey, entry in metadata.items():
        value = getattr(entry, "value", None)
        epoch = value.get("epoch") if isinstance(value, Mapping) else None
        if isinstance(epoch, (int, float)) and epoch > limit:
            logger.debug("left out a progress report of epoch %s (bound %s)", epoch, limit)
            continue
        kept[subkey] = entry
    return kept


def donors_to_try(
    priorities: Mapping[Any, float], own_id: Any, limit: float, excluded: Collection[Any] = ()
) -> tuple[list[Any], list[Any]]:
    """(donors to ask in order, highest declared epoch first; donors skipped for declaring more than `limit`).
    `excluded`: donors whose state this load already refused."""
    others = {peer: priority for peer, priority in priorities.items() if peer != own_id and peer not in excluded}
    skipped = [peer for peer, priority in others.items() if not priority <= limit]  # NaN is skipped too
    usable = sorted((peer for peer in others if peer not in skipped), key=lambda peer: others[peer], reverse=True)
    return usable, skipped


def refusal(metadata: Any, tensors: Sequence[torch.Tensor], limit: float) -> str | None:
    """Why a downloaded state must not be loaded, or None when it may."""
    epoch = metadata.get("epoch") if isinstance(metadata, Mapping) else None
    if not isinstance(epoch, int):
        return "it names no epoch"
    if epoch > limit:
        return f"its epoch {epoch} is beyond what the swarm can have reached ({limit:.0f})"
    if not all(bool(torch.isfinite(tensor).all()) for tensor in tensors if tensor.is_floating_point()):
        return "it has non-finite values"
    return None


class BoundedProgressTracker(ProgressTracker):
    """hivemind's ProgressTracker that does not believe reports beyond the epoch bound."""

    def __init__(self, *args: Any, epoch_limit: EpochLimit = _no_bound, **kwargs: Any):
        self.epoch_limit = epoch_limit  # before hivemind's __init__: it parses the first progress already
        super().__init__(*args, **kwargs)

    def _parse_swarm_progress_data(self, metadata: Any) -> GlobalTrainingProgress:
        return super()._parse_swarm_progress_data(believable_progress(metadata, self.epoch_limit()))


class _CheckedDownload(DecentralizedAverager):
    """The layer between TrainingStateAverager and hivemind's averager (in `BoundedStateAverager`'s MRO): every
    download TrainingStateAverager asks for passes the node's `state_check` before TrainingStateAverager applies it;
    a refused donor is left out and the next one asked, up to MAX_DONORS_PER_LOAD."""

    state_check: StateCheck | None = None
    refused_downloads: Any
    _accepted_epoch: Any = None  # the epoch of the state last handed on to TrainingStateAverager to apply
    main_parameters: Sequence[torch.Tensor]  # TrainingStateAverager's

    def load_state_from_peers(self, wait: bool = True, timeout: float | None = None):
        excluded: list[str] = []
        for _ in range(MAX_DONORS_PER_LOAD):
            self._exclude_donors(excluded)
            loaded = super().load_state_from_peers(wait=wait, timeout=timeout)
            if loaded is None:
                return None
            metadata, tensors = loaded
            donor = metadata.get(DONOR_KEY) if isinstance(metadata, Mapping) else None
            why = None if self.state_check is None else self.state_check(tensors[: len(self.main_parameters)], self.main_parameters)
            if why is None:
                self._accepted_epoch = metadata.get("epoch") if isinstance(metadata, Mapping) else None
                return loaded
            logger.warning(f"Refused the state {donor} sent: {why}")
            with self.refused_downloads.get_lock():
                self.refused_downloads.value += 1
            if donor is None:
                return None
            excluded.append(donor)
        return None

    def _exclude_donors(self, donors: list[str]) -> None:
        future = MPFuture()
        self._outer_pipe.send(("_set_excluded_donors", [], dict(donors=list(donors), future=future)))
        future.result(timeout=60.0)  # an averager process that died: an error hivemind's load loop retries, not a hang

    async def _set_excluded_donors(self, donors: list[str], future: Any) -> None:  # in the averager's process
        self._excluded_donors = set(donors)
        future.set_result(None)


SNAPSHOT_ATTEMPTS = 5  # a round starts every few seconds at the fastest: a second read always finds a quiet moment


def consistent_state(read: Callable[[], tuple], epoch: Callable[[], int], settle: Callable[[], None]) -> tuple:
    """A (metadata, tensors, infos) state whose tensors are the ones its metadata's epoch names.

    hivemind's `get_current_state` returns the live parameter and optimizer tensors (`.cpu()` of a CPU tensor is no
    copy), and its averager serialises them later, in another thread, while a donor's outer round can land. Seen in
    CI (2026-12-03, an overlapped DiLoCo run): the coordinator loaded a state labelled epoch 5 whose parameters were partly round 6's, and
    recomputed an honest newcomer's epoch-5 probe loss as 0.377 against its 0.912. So: let rounds in flight land
    (`settle`), read, copy the tensors, and keep the copy only if no round started meanwhile (the epoch, which
    hivemind increments when a round starts, did not move); else read again."""
    for _ in range(SNAPSHOT_ATTEMPTS):
        settle()
        before = epoch()
        metadata, tensors, infos = read()
        snapshot = [tensor.detach().clone() for tensor in tensors]
        if epoch() == before:
            return metadata, snapshot, infos
    return metadata, snapshot, infos  # rounds back to back: as consistent as hivemind's own


class BoundedStateAverager(TrainingStateAverager, _CheckedDownload):
    """hivemind's TrainingStateAverager whose downloads skip and refuse states beyond the epoch bound, and load only
    a state that passes `state_check` (cairn/network/state_gate.py: its held-out retrieval against the state this node
    holds).

    The download runs in the averager's own process (hivemind sends it the request through a pipe), so the bound
    goes there through a shared value written just before each download, and the donors already refused through
    the pipe."""

    _get_handle_name = hivemind_wire_name(TrainingStateAverager)  # on the wire, hivemind's: other nodes load from it

    def __init__(self, *args: Any, epoch_limit: EpochLimit = _no_bound, state_check: StateCheck | None = None, **kwargs: Any):
        self.epoch_limit = epoch_limit
        self.state_check = state_check
        self._excluded_donors: set[str] = set()
        self._download_limit = mp.Value(ctypes.c_double, math.inf)  # created before hivemind forks the averager
        self.refused_downloads = mp.Value(ctypes.c_int64, 0)  # donors skipped or states refused, for the summary
        self.applied_downloads = 0  # states downloaded and applied (in this process: hivemind applies them here)
        super().__init__(*args, **kwargs)

    def get_current_state(self) -> Any:  # hivemind's: (metadata, tensors, their compression infos), for a download
        return consistent_state(super().get_current_state, lambda: self.local_epoch, self._settle)

    def _settle(self) -> None:
        """What to wait for before reading the state: nothing here (overlapped DiLoCo waits for its round in flight)."""

    def load_state_from_peers(self, wait: bool = True, timeout: float | None = None):
        limit = self.epoch_limit()
        self._download_limit.value = math.inf if limit is None else float(limit)
        self._accepted_epoch = None
        result = super().load_state_from_peers(wait=wait, timeout=timeout)
        if self._accepted_epoch is not None and self.local_epoch == self._accepted_epoch:
            self.applied_downloads += 1  # hivemind applied it (it returns nothing either way): cairn/peer/state_sync.py
        return result

    async def _load_state_from_peers(self, future: Any, timeout: float | None = None) -> None:
        """hivemind's donor loop (DecentralizedAverager._load_state_from_peers), with the bound applied to each donor."""
        from hivemind.p2p import PeerID
        from hivemind.utils.timed_storage import ValueWithExpiration

        if timeout is not None:  # as hivemind: the per-chunk wait, not the whole download's
            timeout = self.next_chunk_timeout if self.next_chunk_timeout is not None else self.request_timeout
        limit = self._download_limit.value
        try:
            found: Any = self.dht.get(f"{self._matchmaking.group_key_manager.prefix}.all_averagers", latest=True)
            declared = found[0] if found is not None and isinstance(found[0], dict) else {}
            priorities = {
                PeerID(peer_id): float(info.value)
                for peer_id, info in declared.items()
                if isinstance(info, ValueWithExpiration) and isinstance(info.value, (float, int))
            }
            donors, skipped = donors_to_try(priorities, self.peer_id, limit, {PeerID.from_base58(d) for d in self._excluded_donors})
            for peer in skipped:
                logger.warning(f"Not downloading state from {peer}: it declares epoch {priorities[peer]:.0f}, beyond {limit:.0f}")
            with self.refused_downloads.get_lock():
                self.refused_downloads.value += len(skipped)
            for peer in donors:
                loaded = await self._download_state(peer, timeout, limit)
                if loaded is not None:
                    future.set_result(loaded)
                    return
        finally:
            if not future.done():
                future.set_result(None)

    async def _download_state(self, peer: Any, timeout: float | None, limit: float) -> tuple | None:
        """One donor's state (in the averager's process): (metadata naming the donor, tensors), or None when it sent
        none, broke off, or sent a state beyond the bound or not finite."""
        from hivemind.compression import deserialize_torch_tensor
        from hivemind.proto import averaging_pb2
        from hivemind.utils.asyncio import aiter_with_timeout
        from hivemind.utils.streaming import combine_from_streaming

        started = time.monotonic()
        try:
            stub = self.get_stub(self._p2p, peer, namespace=self.prefix)
            stream = await stub.rpc_download_state(averaging_pb2.DownloadRequest())
            metadata: Any = None
            parts: list = []
            tensors: list[torch.Tensor] = []
            async for message in aiter_with_timeout(stream, timeout=timeout):
                if message.metadata:
                    metadata = self.serializer.loads(message.metadata)
                if message.tensor_part.dtype and parts:  # a dtype marks the first part of the next tensor
                    tensors.append(deserialize_torch_tensor(combine_from_streaming(parts)))
                    parts = []
                parts.append(message.tensor_part)
            if parts:
                tensors.append(deserialize_torch_tensor(combine_from_streaming(parts)))
            if not metadata:
                logger.debug(f"Peer {peer} did not send its state")
                return None
            why = refusal(metadata, tensors, limit)
            if why is not None:
                logger.warning(f"Refused the state {peer} sent: {why}")
                with self.refused_downloads.get_lock():
                    self.refused_downloads.value += 1
                return None
            logger.info(f"Finished downloading state in {time.monotonic() - started:.3f}s from {peer}")
            return {**metadata, DONOR_KEY: peer.to_base58()}, tensors  # who, for state_check
        except Exception as error:  # a donor that left or broke off: the next one
            logger.warning(f"Failed to download state from {peer} - {error!r}")
            return None

    def state_of(self, peer_id: str, timeout: float = 60.0) -> tuple | None:
        """The state one named peer serves now, (metadata, tensors), applied nowhere: the coordinator's second opinion
        on a failed spot check (cairn/coordinator/spot_checks.py). None when that peer serves none, one beyond the
        bound, or not all of it within `timeout` seconds (a peer that trickles its stream holds nobody up longer)."""
        future = MPFuture()
        self._outer_pipe.send(("_state_of", [], dict(peer_id=peer_id, deadline=timeout, future=future)))
        try:
            return future.result(timeout=timeout + 10.0)
        except Exception as error:  # an averager process that died or hung: no second opinion, the check stands
            logger.warning(f"No state from {peer_id!r} - {error!r}")
            return None

    async def _state_of(self, peer_id: str, deadline: float, future: Any) -> None:  # in the averager's process
        from hivemind.p2p import PeerID

        try:
            chunk = self.next_chunk_timeout if self.next_chunk_timeout is not None else self.request_timeout
            download = self._download_state(PeerID.from_base58(peer_id), chunk, self._download_limit.value)
            future.set_result(await asyncio.wait_for(download, timeout=deadline))
        except Exception as error:  # a malformed peer id (it comes from a peer's record), or past the deadline
            logger.warning(f"Could not get the state of {peer_id!r} - {error!r}")
            future.set_result(None)


class BoundedOptimizer(hivemind.Optimizer):
    """hivemind.Optimizer with a `BoundedProgressTracker` and a bounded state averager (`state_averager_class`).

    hivemind.Optimizer takes no factories for either: these are its `_make_state_averager` and
    `_make_progress_tracker` (hivemind 1.1.12) with the classes replaced; cairn/network/hivemind_contract.py checks that
    both are still there."""

    state_averager_class: type[BoundedStateAverager] = BoundedStateAverager

    def __init__(self, *args: Any, epoch_limit: EpochLimit = _no_bound, state_check: StateCheck | None = None, **kwargs: Any):
        from cairn.network.hivemind_contract import check_hivemind

        check_hivemind()
        self.epoch_limit = epoch_limit  # before hivemind's __init__: it builds the tracker and the averager
        self.state_check = state_check
        super().__init__(*args, **kwargs)

    def _make_state_averager(self, **kwargs: Any) -> TrainingStateAverager:
        return self.state_averager_class(
            dht=self.dht,
            prefix=f"{self.run_id}_state_averager",
            min_matchmaking_time=self.matchmaking_time,
            allreduce_timeout=self.allreduce_timeout,
            shutdown_timeout=self.shutdown_timeout,
            offload_optimizer=self.offload_optimizer,
            custom_gradients=self.offload_optimizer,
            status_loglevel=self.status_loglevel,
            next_chunk_timeout=self.next_chunk_timeout,
            client_mode=self.client_mode,
            auxiliary=self.auxiliary,
            start=True,
            # hivemind gives the optimizer its state slots (one zero-gradient step: AdamW moves nothing) only when its
            # state_dict holds no tensor, and AdamWTowardStart's always holds its start point. Without the slots a
            # download before this peer's first step had nowhere to put the donor's Adam moments and step counts and
            # dropped them silently: a per-step newcomer restarted Adam from zero, its updates near lr x sign(g) where
            # its partners' were damped, and drifted from them on the same averaged gradients (0.109 x the distance
            # moved from its donor at one epoch in a CI run; tests/test_state_download_exactness.py)
            initialize_optimizer=True,
            epoch_limit=self.epoch_limit,
            state_check=self.state_check,
            **kwargs,
        )

    def _make_progress_tracker(self, target_batch_size: int, **kwargs: Any) -> ProgressTracker:
        return BoundedProgressTracker(
            dht=self.dht,
            prefix=self.run_id,
            target_batch_size=target_batch_size,
            client_mode=self.client_mode,
            status_loglevel=self.status_loglevel,
            start=True,
            epoch_limit=self.epoch_limit,
            **kwargs,
        )

    @property
    def refused_downloads(self) -> int:
        """Donors skipped and states refused so far for being beyond the bound or not finite."""
        return int(self.state_averager.refused_downloads.value)


async def _ask_epoch_bound(dht: hivemind.DHT, node: Any, coordinator: str) -> int | str:
    """The coordinator's epoch bound, or why it could not be had, in one line. Runs in the DHT's process (so a
    module-level function: run_coroutine pickles it). A failure is returned, not raised: hivemind logs a coroutine's
    exception with a full traceback there, and a coordinator that is restarting ("failed to dial") is no bug."""
    from hivemind.p2p import PeerID

    from cairn.protocol.rpc import fetch_epoch_bound

    try:
        return await fetch_epoch_bound(node.p2p, PeerID.from_base58(coordinator))
    except Exception as error:
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


class CoordinatorEpochBound:
    """The coordinator's epoch bound (`EpochBound` RPC), extrapolated by this peer's clock and asked again every
    `refresh_seconds` without blocking training. `limit` is what `BoundedOptimizer` takes."""

    def __init__(self, dht: hivemind.DHT, coordinator: str, refresh_seconds: float = 30.0):
        from cairn.protocol.epoch_bound import EpochBound

        self.dht, self.coordinator, self.refresh_seconds = dht, coordinator, refresh_seconds
        self.bound = EpochBound()
        self._pending: Any = None
        self._asked_at = -math.inf

    def limit(self) -> int | None:
        return self.bound.limit()

    def refresh(self) -> None:
        """Ask now and wait for the answer (at start, before the first state download)."""
        self._asked_at = time.monotonic()
        answer = self.dht.run_coroutine(partial(_ask_epoch_bound, coordinator=self.coordinator))
        if isinstance(answer, str):  # an older coordinator, or none reachable: downloads stay unbounded until one answers
            logger.warning("the coordinator did not say how far the swarm can be (%s); state downloads are not bounded yet", answer)
        else:
            self.bound.set(answer)

    def maybe_refresh(self) -> None:
        """Take a finished answer; ask again when the last question is `refresh_seconds` old."""
        if self._pending is not None:
            if not self._pending.done():
                return
            answer = self._pending.result()
            if isinstance(answer, str):  # the coordinator restarting: the last bound keeps growing with the clock
                logger.debug("epoch bound not refreshed: %s", answer)
            else:
                self.bound.set(answer)
            self._pending = None
        if time.monotonic() - self._asked_at >= self.refresh_seconds:
            self._asked_at = time.monotonic()
            self._pending = self.dht.run_coroutine(partial(_ask_epoch_bound, coordinator=self.coordinator), return_future=True)
