"""Robust aggregation where hivemind's all-reduce sees every sender's part (issue 12, attack 3).

In hivemind's butterfly all-reduce each peer reduces one slice ("part") of every tensor for the whole group:
`TensorPartReducer` (hivemind/averaging/partition.py) adds each sender's part into a running, weighted sum as it
arrives. A dishonest peer that skips Cairn's sanitiser (cairn/peer/gradients.py) can send NaN, or a gradient
scaled by -1e6, and that sum hands it to every peer. Here the reducer instead keeps every sender's part of the
current slice (it already waits for all of them before answering anyone, so holding them costs memory, n x part,
not time) and then:

1. drops parts that are not finite, naming the sender in one log line per round;
2. combines the rest by the run's rule (`SwarmConfig.aggregation`), each contributing sender counted once. The
   weight a sender declares (its sample count) is its own claim and is not trusted: a positive weight only says
   it contributes. Guarantees, for n contributing senders of which b are Byzantine:
   - `centered_clip` (BTARD, Gorbunov et al. 2021): start at the coordinate-wise median, then iterate
     v <- v + mean_i clip(x_i - v, tau) with clip(z, tau) = z * min(1, tau / |z|) and tau the distance of the
     (n - (n - 1) // 2)-th closest part from that start (`clip_radius`). Each sender moves v by at most tau / n per iteration, whatever it sends; at the
     fixed point with the honest parts within tau of v, |v - honest mean| <= b * tau / (n - b) (a third of the
     honest spread for n = 4, b = 1). Needs b < n / 2.
   - `trimmed_mean`: per coordinate, drop the k largest and k smallest values and average the rest,
     k = max(1, n // 4) (at most (n - 1) // 2). With b <= k every coordinate lies within the honest senders'
     range for that coordinate. For n = 3 and n = 4 this is the coordinate-wise median.
   - With n = 2 no rule can tell the honest sender from the other: both rules give the plain mean (of the finite
     parts), so two peers are protected only against non-finite values.
   - `mean`: hivemind's own reducer, unpatched (weighted by the declared sample counts); the container only counts
     partial rounds (`PartialRoundCountingContainer`).
3. Each peer checks what every reducer sends back (finite, and not absurdly larger than its own values, or than
   the floor its averager was given: `CheckedTensorPartContainer.floor`) and,
   for a reducer that sent garbage, keeps its own values for that reducer's parts of the round (what hivemind
   does for a reducer that timed out), naming the reducer in one log line.
4. Bans: a peer named in `BAN_AFTER` rounds (a sender of non-finite parts, or a reducer of garbage) within
   `BAN_SECONDS` is left out of this peer's groups for `BAN_SECONDS` after its last offence: as leader this peer
   refuses its join requests, as follower it does not ask it to lead (`BanningMatchmaking`). Steps 1-3 already keep
   its values out of every round; the ban also gives back what it costs while it stays in: its contribution slot
   and, as a reducer, the averaging of its share of every tensor. Once every honest peer has seen it in a group,
   no honest peer averages with it. Only provable offences count: a finite part that is merely far from the others
   is clipped, never banned (sparse embedding gradients make honest peers look far from each other).

Installed by `install_aggregation` in the main process before the averagers fork (they inherit the patched
classes), after `check_hivemind` has confirmed the internals replaced here are as expected.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from hivemind.averaging import allreduce, averager
from hivemind.averaging.matchmaking import Matchmaking
from hivemind.averaging.partition import AllreduceException, BannedException, TensorPartContainer, TensorPartReducer
from hivemind.proto import averaging_pb2

logger = logging.getLogger("cairn.peer.aggregation")

ROBUST_RULES = ("centered_clip", "trimmed_mean")
CLIP_ITERATIONS = 20  # BTARD converges in a handful; the loop stops earlier once v moves by < 1e-6 tau
IMPLAUSIBLE_RATIO = 100.0  # a result whose RMS exceeds 100x our own values' is garbage, not an average

BAN_AFTER = 2  # rounds with an offence: one could be a glitch we have not thought of, two are a pattern
BAN_SECONDS = 3600.0

STOCK = {
    "reducer": allreduce.TensorPartReducer,
    "container": allreduce.TensorPartContainer,
    "runner": averager.AllReduceRunner,
    "matchmaking": averager.Matchmaking,
}


class Offences:
    """Rounds in which each peer (by PeerID string) provably misbehaved, as seen by this averager process."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}
        self.banned_until: dict[str, float] = {}

    def record(self, peer: str, now: float | None = None) -> None:
        """One offending round of `peer` (call once per round and peer); logs the ban when this one starts it."""
        now = time.monotonic() if now is None else now
        recent = [t for t in self.times.get(peer, []) if now - t < BAN_SECONDS] + [now]
        self.times[peer] = recent
        if len(recent) >= BAN_AFTER:
            was = self.banned(peer, now)
            self.banned_until[peer] = now + BAN_SECONDS
            if not was:
                logger.warning(
                    "averaging: %s is left out of this peer's groups for %.0f s: %d rounds of non-finite parts or "
                    "garbage results within %.0f s",
                    peer,
                    BAN_SECONDS,
                    len(recent),
                    BAN_SECONDS,
                )

    def banned(self, peer: str, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) < self.banned_until.get(peer, -math.inf)


OFFENCES = Offences()
"""This process's record: every averager runs in its own forked process, so each keeps its own."""


def coordinate_median(parts: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median of `parts` (n, d); the mean of the two middle values for even n."""
    ordered = parts.sort(dim=0).values
    n = parts.shape[0]
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def trim_count(n: int) -> int:
    """How many of the largest and of the smallest values `trimmed_mean` drops per coordinate for n senders."""
    return 0 if n < 3 else min(max(1, n // 4), (n - 1) // 2)


def trimmed_mean(parts: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise trimmed mean of `parts` (n, d): see `trim_count`."""
    k = trim_count(parts.shape[0])
    if k == 0:
        return parts.mean(dim=0)
    return parts.sort(dim=0).values[k : parts.shape[0] - k].mean(dim=0)


def clip_radius(parts: torch.Tensor, start: torch.Tensor) -> float:
    """CenteredClip's tau: the distance from `start` of the (n - (n - 1) // 2)-th closest part.

    With the most Byzantine senders the rule tolerates, b = (n - 1) // 2, that is the farthest honest part when all
    Byzantine parts are farther; so honest parts are (about) unclipped, which is what the bound needs, and tau adapts
    to each slice's scale, so nothing has to be tuned per tensor. The lower median (n = 4: the 2nd closest) clipped
    honest parts and broke the bound in tests.
    """
    n = parts.shape[0]
    return float((parts - start).norm(dim=1).sort().values[n - (n - 1) // 2 - 1])


def centered_clip(parts: torch.Tensor, iterations: int = CLIP_ITERATIONS) -> torch.Tensor:
    """BTARD's CenteredClip of `parts` (n, d), started at the coordinate-wise median, tau from `clip_radius`."""
    v = coordinate_median(parts)
    tau = clip_radius(parts, v)
    if not tau > 0:
        return v  # at least half the parts are identical to the median: nothing to clip toward
    for _ in range(iterations):
        offsets = parts - v
        scale = (tau / offsets.norm(dim=1).clamp_min(1e-30)).clamp(max=1.0)
        step = (offsets * scale[:, None]).mean(dim=0)
        v = v + step
        if float(step.norm()) <= 1e-6 * tau:
            break
    return v


RULES = {"centered_clip": centered_clip, "trimmed_mean": trimmed_mean}


class RobustTensorPartReducer(TensorPartReducer):
    """hivemind's reducer with the sum replaced by: keep every sender's part, drop non-finite ones, reduce by `rule`.

    The part bookkeeping (which part is current, failed senders, the future every sender awaits) is hivemind's,
    unchanged; only what happens to a part between its arrival and the answer differs.
    """

    rule: str = "centered_clip"  # set by install_aggregation before the averagers fork
    sender_names: Sequence[str] = ()  # set by RobustAllReduceRunner: peer ids for the log
    own_name: str = ""  # this peer's id (set by RobustAllReduceRunner): never an offender in its own eyes

    def reset_accumulators(self) -> None:
        super().reset_accumulators()
        self.received: list[tuple[int, torch.Tensor, float]] = []
        if not hasattr(self, "reported"):
            self.reported: set[int] = set()  # senders already named in the log this round: one line each

    async def accumulate_part(self, sender_index: int, part_index: int, tensor_part: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        """Keep this sender's part until every sender's part of this slice is in, then return the robust aggregate."""
        assert 0 <= sender_index < self.num_senders, "invalid sender index"
        assert 0 <= part_index < self.num_parts, "invalid part index"
        if tensor_part.shape != self.part_shapes[part_index]:
            # refused before it counts as received: hivemind then bans the sender and, since this part never arrived,
            # finishes the slice without it. (hivemind's own sum raised only after counting it, so the ban left the
            # slice waiting for a part that would never come: the round stalled until its timeout. A peer splitting
            # its tensors for another compression than the group's, `--compression none` in a blockwise run, did it.)
            raise AllreduceException(
                f"sender {self._name(sender_index)} sent a part of shape {tuple(tensor_part.shape)}, "
                f"expected {tuple(self.part_shapes[part_index])}"
            )
        self.num_parts_received[sender_index] += 1
        while part_index > self.current_part_index:  # hivemind's wait for the previous slices, unchanged
            await asyncio.wait({self.current_part_future, asyncio.create_task(self.finished.wait())}, return_when=asyncio.FIRST_COMPLETED)
            if self.finished.is_set():
                raise AllreduceException(f"attempted to aggregate part in a finalized {self.__class__.__name__}")
        if self.sender_failed_after[sender_index] != float("inf"):
            raise BannedException(f"sender {sender_index} was banned in background")
        assert part_index == self.current_part_index
        current_part_future = self.current_part_future
        if part_index < self.sender_failed_after[sender_index]:
            self.received.append((sender_index, tensor_part.detach().float(), float(weight)))
            self.current_part_accumulated_from += 1
            self.check_current_part_finished()
        return await current_part_future

    def check_current_part_finished(self) -> None:
        assert self.current_part_accumulated_from <= self.num_current_senders
        if self.current_part_accumulated_from == self.num_current_senders:
            self.current_part_future.set_result(self.reduce())
            self.reset_accumulators()

    def reduce(self) -> torch.Tensor:
        """The current slice's aggregate over the finite parts of contributing senders."""
        shape = self.part_shapes[self.current_part_index]
        kept = []
        for sender, part, weight in self.received:
            if not bool(torch.isfinite(part).all()):
                self._report(
                    sender,
                    f"sent a part that is not finite (slice {self.current_part_index}); its non-finite parts "
                    f"are left out of this round's {self.rule}",
                )
            elif not (math.isfinite(weight) and weight > 0):
                continue  # weight 0: a peer with no samples this round (hivemind sends zeros), not an opinion
            else:
                kept.append(part.reshape(-1))
        if not kept:
            return torch.zeros(shape)
        stacked = torch.stack(kept)
        return RULES[self.rule](stacked).reshape(shape) if len(kept) > 1 else stacked[0].reshape(shape)

    def _report(self, sender: int, what: str) -> None:
        if sender not in self.reported:
            self.reported.add(sender)
            logger.warning("averaging: sender %s %s", self._name(sender), what)
            if self._name(sender) != self.own_name:
                OFFENCES.record(self._name(sender))

    def _name(self, sender: int) -> str:
        return self.sender_names[sender] if sender < len(self.sender_names) else f"#{sender}"


def implausible(own: torch.Tensor, result: torch.Tensor, scale: float) -> str | None:
    """Why `result` (a reducer's answer for the slice whose local values are `own`) is garbage; None when plausible.

    `scale` is the RMS of all this peer's local values, or the container's floor when larger: a slice where this
    peer's own values happen to be ~0 (an embedding row no local batch touched) is judged against it, not against its
    own near-zero RMS.
    """
    if not bool(torch.isfinite(result).all()):
        return "a result that is not finite"
    if scale <= 0:
        return None  # this peer contributed nothing this round: it has no yardstick beyond finiteness
    own_rms = float(own.float().pow(2).mean().sqrt()) if own.numel() else 0.0
    result_rms = float(result.float().pow(2).mean().sqrt()) if result.numel() else 0.0
    bound = IMPLAUSIBLE_RATIO * max(own_rms, scale)
    return f"a result {result_rms / max(own_rms, scale):.3g}x larger than ours (RMS)" if result_rms > bound else None


class PartialRoundCountingContainer(TensorPartContainer):
    """hivemind's part container, counting the rounds that came back partly as this peer's own values.

    For a reducer that failed (and, in `CheckedTensorPartContainer`, one whose answer was refused) hivemind keeps this
    peer's own values on that reducer's slices and reports the round as a success, with one warning line in the
    averager's process ("received 53.0% results"). On those slices this peer then holds a state nobody else does: seen
    as two DiLoCo peers that "shared" a state yet differed by 6 % of what they had moved (CI, 2026-12-04). The training
    process reads the count (cairn/peer/state_sync.py) and treats such a round as one that diverged.
    """

    # a multiprocessing Value shared with the training process, installed in the averager's process before each
    # all-reduce (cairn/peer/diloco.py PeerGradientAverager); None: not counted
    partial_rounds: Any = None

    def finalize(self) -> None:
        counter = self.partial_rounds
        if counter is not None and not self.finished.is_set() and self.failed_size:
            with counter.get_lock():
                counter.value += 1
        super().finalize()


class CheckedTensorPartContainer(PartialRoundCountingContainer):
    """hivemind's part container, checking each reducer's answer before it reaches this peer's tensors."""

    peer_names: Sequence[str] = ()  # set by RobustAllReduceRunner: peer ids for the log
    own_name: str = ""
    # The least RMS a plausible answer is judged against, whatever this peer's own values: set in the averager's own
    # process before each all-reduce (cairn/peer/diloco.py PeerGradientAverager). A DiLoCo pseudo-gradient's size
    # depends on how far this peer got in the round, so a newcomer that joined mid-round (a few inner steps, still
    # warming up) judged an honest reducer's average "104x larger than ours", kept its own values for that slice,
    # recorded an offence against an honest peer, and left the swarm's outer state (CI, 2026-12-03). 0: own values only.
    floor: float = 0.0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.untrusted: set[int] = set()
        squares = sum(float(t.detach().float().pow(2).sum()) for t in self.local_tensors)
        own = math.sqrt(squares / self.total_size) if self.total_size else 0.0
        self.scale = max(own, self.floor)

    def register_processed_part(self, peer_index: int, part_index: int, part: torch.Tensor) -> None:
        own = self._input_parts_by_peer[peer_index][part_index][0] if part_index < len(self._input_parts_by_peer[peer_index]) else None
        if own is not None and self.return_deltas and peer_index not in self.untrusted:
            reason = implausible(own, own + part if part.shape == own.shape else part.new_full((1,), math.nan), self.scale)
            if reason is not None:
                self.untrusted.add(peer_index)
                name = self.peer_names[peer_index] if peer_index < len(self.peer_names) else f"#{peer_index}"
                # the reducer is dishonest, or its group was too small to outvote a dishonest sender (two peers)
                logger.warning(
                    "averaging: reducer %s sent %s for slice %d (a dishonest reducer, or a dishonest sender in a "
                    "group too small to outvote it); keeping this peer's own values for that reducer's slices this "
                    "round",
                    name,
                    reason,
                    part_index,
                )
                if name != self.own_name:
                    OFFENCES.record(name)
        if own is not None and self.return_deltas and peer_index in self.untrusted:
            part = torch.zeros_like(own)  # delta 0: our own values, as hivemind does for a reducer that failed
            self.failed_size += part.numel()
        super().register_processed_part(peer_index, part_index, part)


class RobustAllReduceRunner(allreduce.AllReduceRunner):
    """hivemind's all-reduce runner, handing the group's peer ids to the reducer and the container for their logs."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.tensor_part_reducer.sender_names = [str(peer) for peer in self.sender_peer_ids]
        self.tensor_part_container.peer_names = [str(peer) for peer in self.ordered_peer_ids]
        self.tensor_part_reducer.own_name = self.tensor_part_container.own_name = str(self.peer_id)


class BanningMatchmaking(Matchmaking):
    """hivemind's matchmaking, leaving out the peers this process has banned (module doc, step 4)."""

    def _check_reasons_to_reject(self, request: averaging_pb2.JoinRequest, context) -> averaging_pb2.MessageFromLeader | None:
        if OFFENCES.banned(str(context.remote_id)):
            return averaging_pb2.MessageFromLeader(code=averaging_pb2.PROTOCOL_VIOLATION)
        return super()._check_reasons_to_reject(request, context)

    async def _request_join_group(self, leader):
        if OFFENCES.banned(str(leader)):
            return None  # as if it had refused us: the search goes on with the next leader
        return await super()._request_join_group(leader)


def install_aggregation(rule: str) -> None:
    """Make this process's future averagers reduce by `rule` ('mean' restores hivemind's own classes).

    Call in the main process before the averagers start: they fork and keep the classes installed at that moment.
    """
    from cairn.network.hivemind_contract import check_hivemind

    if rule != "mean" and rule not in RULES:
        raise ValueError(f"unknown aggregation rule {rule!r}; choose mean or one of {', '.join(RULES)}")
    check_hivemind()  # the classes replaced here are hivemind internals: refuse, in one line, a hivemind without them
    if rule == "mean":
        allreduce.TensorPartReducer, allreduce.TensorPartContainer = STOCK["reducer"], PartialRoundCountingContainer
        averager.AllReduceRunner, averager.Matchmaking = STOCK["runner"], STOCK["matchmaking"]
        return
    RobustTensorPartReducer.rule = rule
    allreduce.TensorPartReducer, allreduce.TensorPartContainer = RobustTensorPartReducer, CheckedTensorPartContainer
    averager.AllReduceRunner, averager.Matchmaking = RobustAllReduceRunner, BanningMatchmaking
