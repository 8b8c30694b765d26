"""How a peer's batch becomes a shared update: per-step gradient averaging, or DiLoCo (issue 13).

Per-step gradient averaging (`GradientSteps`) hands every batch's gradient to hivemind.Optimizer, which
all-reduces the accumulated gradients once per global step and applies the run's AdamW to the shared parameters:
the network carries one gradient per `target_batch_size` samples.

DiLoCo (`DiLoCoSteps`, Douillard et al. 2023; OpenDiLoCo on hivemind) trains the peer's own copy of the encoder
with a local AdamW for the whole outer round (`outer_every` global steps' worth of samples, all peers together),
then averages the *pseudo-gradient* (shared parameters minus local parameters) and lets an outer SGD with Nesterov
momentum step the shared parameters. The network carries one (compressed) pseudo-gradient per outer round.

The shared ("outer") parameters are what hivemind.Optimizer holds: the state a late joiner downloads and the
coordinator evaluates and releases is always the last outer round's, never a half-finished inner one.

hivemind integration: the outer parameters are separate tensors with `reuse_grad_buffers=True`, so their `.grad`
is what hivemind averages; hivemind divides it by the number of `step()` calls it accumulated, so before each
call the pseudo-gradient is written multiplied by that count (the division then yields exactly outer - local).

Overlapped outer rounds (`SwarmConfig.outer_overlap`, `OverlappedDiLoCoSteps`; Streaming DiLoCo's / OpenDiLoCo's
one-round delay): a synchronous round stops every peer for the all-reduce, which on a home link is seconds per
round. With hivemind's own `delay_grad_averaging` + `delay_optimizer_step` (offloaded optimizer), the round that
closes at a step runs in hivemind's background executor (all-reduce, then the outer SGD on the offloaded copy)
while the peer keeps taking inner steps; the new outer parameters land at a later `step()`, when hivemind copies
them into the outer tensors. The model then continues from new outer + (inner progress since the round's
pseudo-gradient was taken): nothing is lost, nothing is sent twice. The bookkeeping is one `reference` copy:

- the pseudo-gradient is reference - local (with reference = the outer parameters, this is the synchronous rule);
- when a round takes the pseudo-gradient, reference := local (that progress is now the round's);
- when hivemind replaces the outer parameters (a round's result, a state averaging round), local += new outer -
  reference and reference := new outer: the unsent progress (local - reference) is carried over unchanged.

hivemind waits for a round in flight before it takes the next one, so a round lands at the latest when the next
closes: the outer state is at most one round behind, and a peer waits on the network only when a round lasts
longer than a whole inner phase. Two hivemind details are made safe for this (`OuterGradientAverager`,
`OverlappedOuterOptimizer`): a failed round falls back to the pseudo-gradient this peer sent (not to the buffers
the next round is filling), and a joiner or the coordinator downloading the state while a round is in flight gets
that round's result, not the previous round's parameters under the new epoch number.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import multiprocessing as mp
import time
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import hivemind
import torch
from hivemind.optim.grad_averager import GradientAverager

from cairn.network.hivemind_contract import hivemind_wire_name
from cairn.network.trusted_state import BoundedOptimizer, BoundedStateAverager
from cairn.peer.aggregation import CheckedTensorPartContainer, PartialRoundCountingContainer
from cairn.peer.deadlines import AdaptiveDeadlines, GroupQuorum, LateGroupRegistration
from cairn.peer.error_feedback import ErrorFeedbackTopK
from cairn.protocol.encoder import TextEncoder


class GradientSteps:
    """Per-step gradient averaging: hivemind accumulates this batch's gradient and steps the shared AdamW."""

    # after a failed round the peer's state is its own until the state averaging round a few steps on
    # (cairn/peer/state_sync.py): not worth a download
    catches_up_after_failed_rounds = False

    def __init__(self, model: TextEncoder, optimizer: hivemind.Optimizer):
        self.model, self.optimizer = model, optimizer

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad()

    def after_new_epoch(self) -> None:
        """Nothing to do: the model's parameters are the shared ones."""

    def probe_point(self, epoch_changed: bool, round_ended_here: bool) -> contextlib.AbstractContextManager | None:
        """Where a probe can be taken: a context in which the model holds the shared parameters of the current epoch
        (the state the coordinator recomputes the probe on), or None after this step. Here: right after an update
        that a round of this step produced. An epoch reached by a state download is not one: hivemind may serve an
        epoch with the parameters of the one before (an honest late joiner failed a spot check so, 0.914 vs 1.058)."""
        return contextlib.nullcontext() if epoch_changed and round_ended_here else None

    def shared_state_into_model(self) -> None:
        """Nothing to do: the model's parameters are the shared ones."""

    def leave(self) -> bool:
        """Nothing to do: the model's parameters are the shared ones. True: what the peer keeps is the swarm's state
        as far as this peer knows (`OverlappedDiLoCoSteps.leave` can say otherwise)."""
        return True


def outer_parameters(model: TextEncoder) -> list[torch.nn.Parameter]:
    """A copy of the model's parameters for hivemind.Optimizer to hold as the shared (outer) state."""
    return [torch.nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad) for p in model.parameters()]


def outer_round_scale(optimizer: hivemind.Optimizer) -> float:
    """The typical RMS of one outer round's averaged pseudo-gradient, read off the outer SGD's Nesterov momentum
    buffer m (m <- mu m + g each round): RMS(m) x (1 - mu) is one round's g when rounds agree in direction and about a
    quarter of it (mu = 0.9) when they do not. 0 before the first round (or with no momentum).

    It comes with the outer state, so a newcomer has it as soon as it has downloaded that state (which passed the
    state check, cairn/network/state_gate.py): a yardstick that does not depend on how far this peer got in the round.
    """
    outer_optimizer = optimizer.state_averager.optimizer
    squares, count = 0.0, 0
    for group in outer_optimizer.param_groups:
        keep = 1.0 - float(group.get("momentum", 0.0))
        for parameter in group["params"]:
            buffer = outer_optimizer.state.get(parameter, {}).get("momentum_buffer")
            if isinstance(buffer, torch.Tensor) and buffer.numel():
                squares += float(buffer.detach().float().pow(2).sum()) * keep * keep
                count += buffer.numel()
    scale = math.sqrt(squares / count) if count else 0.0
    return scale if math.isfinite(scale) else 0.0


class PeerGradientAverager(LateGroupRegistration, AdaptiveDeadlines, GroupQuorum, GradientAverager):
    """hivemind's GradientAverager as a Cairn peer runs it, in both averaging modes:

    - its all-reduces run under deadlines that follow the rounds its groups take (`AdaptiveDeadlines`,
      cairn/peer/deadlines.py);
    - as a leader it starts a group as soon as every expected peer has joined (`GroupQuorum`, same module), and a
      groupmate's part that arrives before this averager registered the group waits for it (`LateGroupRegistration`);
    - it judges the reducers' answers against at least a floor set by the training process
      (`CheckedTensorPartContainer.floor`, cairn/peer/aggregation.py: why a DiLoCo newcomer needs one). The all-reduce
      runs in the averager's own (forked) process: the floor goes there through a shared value written before each
      round and is installed in that process just before its all-reduce builds the part container;
    - it counts the rounds that came back partly as this peer's own values (`partial_rounds`, read by
      cairn/peer/state_sync.py), which hivemind reports as successes;
    - with `topk` (DiLoCo's `SwarmConfig.outer_topk`), a round sends only the largest values of what this peer owes
      and keeps the rest for the next round (cairn/peer/error_feedback.py). Only a round takes them: a fallback after
      a round alone or a failed one loads the accumulators again and applies them whole, as hivemind does."""

    _get_handle_name = hivemind_wire_name(GradientAverager)  # on the wire, hivemind's GradientAverager

    def __init__(self, *args: Any, topk: float = 0.0, **kwargs: Any) -> None:
        self.error_feedback = ErrorFeedbackTopK(topk) if topk else None
        self._taking_round = False  # inside step(): the accumulators are loaded for a round, not for a fallback
        self.plausibility_floor = mp.Value(ctypes.c_double, 0.0)  # before hivemind forks the averager's process
        self.partial_rounds = mp.Value(ctypes.c_long, 0)  # rounds that came back partly as this peer's own values
        # hivemind.Optimizer.load_state_from_peers downloads the gradient averager's buffers too (fp32, the size of the
        # parameters: 31 MB for the default encoder, as much again as the state itself) and throws them away, since it
        # resets the accumulators right after. A peer that serves none makes every join and catch-up that much shorter.
        kwargs.setdefault("allow_state_sharing", False)
        super().__init__(*args, **kwargs)

    async def _run_allreduce_inplace_(self, tensors, group_info, group_id=None, **kwargs):  # in the averager's process
        CheckedTensorPartContainer.floor = float(self.plausibility_floor.value)
        PartialRoundCountingContainer.partial_rounds = self.partial_rounds  # Checked... inherits it
        return await super()._run_allreduce_inplace_(tensors, group_info, group_id, **kwargs)

    def step(self, *args, **kwargs):
        self._taking_round = True
        try:
            return super().step(*args, **kwargs)
        finally:
            self._taking_round = False

    @torch.no_grad()
    def load_accumulators_into_averager_(self) -> None:
        super().load_accumulators_into_averager_()
        if self._taking_round and self.error_feedback is not None:
            with self.get_tensors() as averaged:
                self.error_feedback.sparsify_(averaged)


class DiLoCoSteps:
    """DiLoCo: a local AdamW step on this peer's copy every batch; an outer round every `outer_every` global steps."""

    def __init__(
        self,
        model: TextEncoder,
        optimizer: hivemind.Optimizer,
        outer: list[torch.nn.Parameter],
        inner_optimizer: torch.optim.Optimizer,
        inner_scheduler: torch.optim.lr_scheduler.LRScheduler,
    ):
        self.model, self.optimizer, self.outer = model, optimizer, outer
        self.inner_optimizer, self.inner_scheduler = inner_optimizer, inner_scheduler
        self.local = [p for p in model.parameters()]
        if len(self.local) != len(self.outer) or any(a.shape != b.shape for a, b in zip(self.local, self.outer)):
            raise ValueError("the outer parameters do not match the model's")
        self._floor_version: int | None = None  # the outer state's version the plausibility floor was read from

    # state averaging comes only every `average_state_every` outer rounds: after a failed round, download the swarm's
    # state instead (cairn/peer/state_sync.py)
    catches_up_after_failed_rounds = True

    def step(self) -> None:
        self.inner_optimizer.step()
        self.inner_scheduler.step()
        self.inner_optimizer.zero_grad(set_to_none=True)
        self._write_pseudo_gradient()
        self._refresh_plausibility_floor()
        self.optimizer.step()  # counts the samples; at the end of an outer round, averages and steps the outer SGD

    def _version(self) -> int:
        """torch's in-place counter of the outer tensors: it moves exactly when hivemind writes new outer parameters
        (a round's result, a state averaging round, a state download); Cairn itself writes only their .grad."""
        return sum(shared._version for shared in self.outer)

    def _refresh_plausibility_floor(self) -> None:
        """Give the averager the outer state's round scale (`outer_round_scale`) whenever that state changed: the
        reducers' answers are then judged against the swarm's rounds, not against this peer's progress in this one."""
        floor = getattr(self.optimizer.grad_averager, "plausibility_floor", None)
        version = self._version()
        if floor is not None and version != self._floor_version:
            floor.value = outer_round_scale(self.optimizer)
            self._floor_version = version

    @torch.no_grad()
    def _write_pseudo_gradient(self) -> None:
        """outer.grad = (outer - local) x (hivemind's accumulation count after this step): see the module docstring."""
        scale = float(self.optimizer.grad_averager.local_times_accumulated + 1)
        for shared, local in zip(self.outer, self.local):
            if shared.grad is None:
                shared.grad = torch.empty_like(shared)
            torch.sub(shared, local.to(shared.device), out=shared.grad).mul_(scale)

    def after_new_epoch(self) -> None:
        """A new outer round began (an outer step, or state loaded from peers): continue from the shared parameters."""
        self.shared_state_into_model()

    def probe_point(self, epoch_changed: bool, round_ended_here: bool) -> contextlib.AbstractContextManager | None:
        """Right after an outer step of this step's round the model is the shared state (`after_new_epoch`)."""
        return contextlib.nullcontext() if epoch_changed and round_ended_here else None

    @torch.no_grad()
    def shared_state_into_model(self) -> None:
        for shared, local in zip(self.outer, self.local):
            local.copy_(shared.to(local.device))

    def state_loaded(self) -> None:
        """The swarm's state was downloaded between steps (`state_sync.catch_up`, right after a failed synchronous
        round, with no inner step since): continue from it."""
        self.shared_state_into_model()

    def leave(self) -> bool:
        """What the peer keeps when it stops is the swarm's shared state, not a half-finished inner round."""
        self.shared_state_into_model()
        return True


class OuterGradientAverager(PeerGradientAverager):
    """hivemind's GradientAverager for overlapped outer rounds: a failed round falls back to what this peer sent.

    hivemind's fallback after a failed all-reduce reloads the accumulators; with a delayed round it does so in its
    background thread, while the main thread is already writing the next round's pseudo-gradient into them (and
    after a started round hivemind has zeroed them: a synchronous round falls back to zeros). This averager keeps a
    copy of what the round took and restores that instead. It also counts the rounds that took the accumulators
    (`rounds_taken`): how `OverlappedDiLoCoSteps` tells a round's start from a state download (both change the epoch).
    """

    _get_handle_name = hivemind_wire_name(GradientAverager)  # on the wire, hivemind's GradientAverager

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sent: list[torch.Tensor] | None = None
        self.rounds_taken = 0

    @torch.no_grad()
    def load_accumulators_into_averager_(self) -> None:
        if self._sent is not None and not self._taking_round:  # the fallback of the round in flight: what it sent
            with self.get_tensors() as averaged:
                for tensor, sent in zip(averaged, self._sent):
                    tensor.copy_(sent)
            return
        super().load_accumulators_into_averager_()  # with top-k: the values this round sends
        self.rounds_taken += 1
        if self._taking_round:  # the all-reduce overwrites these buffers in place: keep this peer's part
            with self.get_tensors() as averaged:
                self._sent = [tensor.clone() for tensor in averaged]

    def notify_used_averaged_gradients(self) -> None:
        super().notify_used_averaged_gradients()
        self._sent = None


class OuterStateAverager(BoundedStateAverager):
    """hivemind's TrainingStateAverager whose state downloads wait for a delayed outer step in flight.

    With a delayed step hivemind increments the epoch when the round starts, while the (offloaded) parameters it
    serves change only when the round ends: a joiner in between would get the previous round's parameters under
    the new epoch, one outer step behind every other peer for good. Waiting (bounded by the all-reduce timeout) for
    the round in flight serves a consistent pair; the base class copies it before a next round can land on it
    (cairn/network/trusted_state.py, `consistent_state`). On the wire it is hivemind's TrainingStateAverager (as its
    base), so the coordinator loads it."""

    def _settle(self) -> None:
        """Wait (bounded by the all-reduce timeout) for the outer rounds in flight to land, before each read of the
        state (`BoundedStateAverager.get_current_state`)."""
        deadline = time.monotonic() + (self._allreduce_timeout or 60.0) + 5.0
        in_flight: list = []
        for _ in range(100):
            try:
                in_flight = list(self.pending_updates)  # the main thread adds and removes: retry a set that changed
                break
            except RuntimeError:
                continue
        for update in in_flight:
            try:
                update.result(timeout=max(0.0, deadline - time.monotonic()))
            except BaseException:  # a failed or cancelled round: serve what is there, as hivemind would
                pass


class OverlappedOuterOptimizer(BoundedOptimizer):
    """The bounded hivemind.Optimizer (cairn/network/trusted_state.py) whose state averager is an `OuterStateAverager`."""

    state_averager_class = OuterStateAverager


def overlap_options(request_timeout: float, topk: float = 0.0) -> dict:
    """hivemind.Optimizer keyword arguments of an overlapped outer round (for an `OverlappedOuterOptimizer`)."""
    from cairn.network.hivemind_contract import check_hivemind

    check_hivemind()  # the classes above override hivemind internals: refuse, in one line, a hivemind without them
    return dict(
        delay_grad_averaging=True,
        delay_optimizer_step=True,
        offload_optimizer=True,
        grad_averager_factory=partial(OuterGradientAverager, request_timeout=request_timeout, topk=topk),
    )


class OverlappedDiLoCoSteps(DiLoCoSteps):
    """DiLoCo whose outer round runs in the background while the inner steps go on (see the module docstring)."""

    def __init__(
        self,
        model: TextEncoder,
        optimizer: hivemind.Optimizer,
        outer: list[torch.nn.Parameter],
        inner_optimizer: torch.optim.Optimizer,
        inner_scheduler: torch.optim.lr_scheduler.LRScheduler,
    ):
        super().__init__(model, optimizer, outer, inner_optimizer, inner_scheduler)
        if not (optimizer.delay_grad_averaging and isinstance(optimizer.grad_averager, OuterGradientAverager)):
            raise ValueError("overlapped DiLoCo needs a hivemind.Optimizer built with overlap_options()")
        with torch.no_grad():
            self.reference = [shared.detach().to(local.device).clone() for shared, local in zip(self.outer, self.local)]
        self._outer_version = self._version()
        self._rounds_taken = optimizer.grad_averager.rounds_taken
        self._landed_alone = False  # this step applied a round's result and began no round: the outer is the epoch's

    def step(self) -> None:
        epoch = self.optimizer.local_epoch
        super().step()
        landed, rounds_taken = self._version() != self._outer_version, self.optimizer.grad_averager.rounds_taken
        self._landed_alone = landed and rounds_taken == self._rounds_taken and self.optimizer.local_epoch == epoch
        if rounds_taken != self._rounds_taken:
            # a round took the pseudo-gradient in this step. A result that landed in the same call was the previous
            # round's, applied before this one began (hivemind waits for it first): carry the progress over, then
            # everything up to here belongs to the new round
            if landed:
                self._carry_progress_onto_outer()
            self._copy(self.local, self.reference)
        elif self.optimizer.local_epoch != epoch:
            self.shared_state_into_model()  # out of sync: hivemind loaded the swarm's state; start from it
        elif landed:
            self._carry_progress_onto_outer()
        self._outer_version, self._rounds_taken = self._version(), rounds_taken

    @torch.no_grad()
    def _write_pseudo_gradient(self) -> None:
        """outer.grad = (reference - local) x (hivemind's accumulation count after this step)."""
        scale = float(self.optimizer.grad_averager.local_times_accumulated + 1)
        for shared, reference, local in zip(self.outer, self.reference, self.local):
            if shared.grad is None:
                shared.grad = torch.empty_like(shared)
            shared.grad.copy_(torch.sub(reference, local).mul_(scale))

    @torch.no_grad()
    def _carry_progress_onto_outer(self) -> None:
        """New outer parameters landed: local = new outer + (local - reference); reference = new outer."""
        for shared, reference, local in zip(self.outer, self.reference, self.local):
            new = shared.detach().to(local.device)
            local.add_(new - reference)
            reference.copy_(new)

    @staticmethod
    @torch.no_grad()
    def _copy(sources: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> None:
        for source, target in zip(sources, targets):
            target.copy_(source)

    def after_new_epoch(self) -> None:
        """Nothing to do: `step` already saw whether a round began (keep training) or the state was loaded."""

    def state_loaded(self) -> None:
        """The swarm's state was downloaded between steps (`state_sync.catch_up`, after a failed round): the inner
        progress made since this peer's last round took its pseudo-gradient goes on top of it, unsent yet."""
        self._carry_progress_onto_outer()
        self._outer_version = self._version()

    def probe_point(self, epoch_changed: bool, round_ended_here: bool) -> contextlib.AbstractContextManager | None:
        """When a round's result has just landed (its outcome was reported in the background, not in this step): the outer parameters are then the state this epoch serves
        (`OuterStateAverager` waits for a round in flight), while the model holds inner progress on top of them.
        A probe taken on the model at the epoch change (the rule of the other modes) failed honest peers' spot checks
        (0.38 claimed against 0.23 recomputed); it is taken on the outer parameters, put in the model for the while."""
        return self._outer_in_model() if self._landed_alone else None

    @contextlib.contextmanager
    def _outer_in_model(self) -> Iterator[None]:
        saved = [local.detach().clone() for local in self.local]
        self._copy([shared.detach() for shared in self.outer], self.local)
        try:
            yield
        finally:
            self._copy(saved, self.local)

    def leave(self) -> bool:
        """Let a round in flight finish first (bounded by hivemind's all-reduce timeout): the others' round needs this
        peer's part, and what the peer keeps is then the last round's shared state, the one its partners keep too.

        False when the round in flight did not land in that time (hivemind cancels it): the peer then keeps the
        previous round's state while its partners applied this one. Seen in a test where two peers left together:
        one's last round completed and the other's timed out, and the two saved states differed by most of one
        outer step (0.6 x the previous round's update) although both said their state was the swarm's."""
        in_flight = [update for update in list(self.optimizer.state_averager.pending_updates) if not update.done()]
        self.optimizer.state_averager.step(wait_for_delayed_updates=True)
        landed = all(update.done() and not update.cancelled() and update.exception() is None for update in in_flight)
        self.shared_state_into_model()
        return landed

    @torch.no_grad()
    def shared_state_into_model(self) -> None:
        """The joiner rule: continue from the outer state exactly, with no unsent progress."""
        super().shared_state_into_model()
        self._copy([shared.detach() for shared in self.outer], self.reference)
        self._outer_version = self._version()
