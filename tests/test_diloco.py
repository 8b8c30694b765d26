"""DiLoCo's step (cairn/peer/diloco.py) on known answers, with a real hivemind.Optimizer on an in-process DHT."""

from __future__ import annotations

import json
import math
import time

import hivemind
import pytest
import torch

from averaging_util import linked_dhts, shut_down
from cairn.peer.aggregation import install_aggregation
from cairn.peer.diloco import (
    DiLoCoSteps,
    PeerGradientAverager,
    GradientSteps,
    OuterGradientAverager,
    OuterStateAverager,
    OverlappedDiLoCoSteps,
    OverlappedOuterOptimizer,
    outer_parameters,
    overlap_options,
)
from cairn.protocol.run_config import RunConfig, SwarmConfig, TrainingConfig
from cairn.training.task import OUTER_MOMENTUM, shared_optimizer_factories


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))

    def loss(self) -> torch.Tensor:
        return ((self.weight - torch.tensor([0.5, 0.5, 0.5])) ** 2).sum()


@pytest.fixture
def dht():
    node = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    yield node
    node.shutdown()


def _diloco(dht, swarm: SwarmConfig, run_id: str):
    """A model, its outer copy held by a real hivemind.Optimizer as the peer configures it, and the DiLoCo steps
    (inner SGD at lr 0.1, constant schedule)."""
    model = Tiny()
    outer = outer_parameters(model)
    factory, scheduler = shared_optimizer_factories(TrainingConfig(), swarm)
    assert scheduler is None  # DiLoCo's shared optimizer has no schedule: the inner one does
    optimizer = hivemind.Optimizer(
        dht=dht,
        run_id=run_id,
        target_batch_size=swarm.samples_per_epoch,
        batch_size_per_step=2,
        params=outer,
        optimizer=factory,
        reuse_grad_buffers=True,
        matchmaking_time=0.5,
        averaging_timeout=5,
        verbose=False,
    )
    inner = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, outer, optimizer, DiLoCoSteps(model, optimizer, outer, inner, torch.optim.lr_scheduler.LambdaLR(inner, lambda _: 1.0))


@pytest.mark.slow  # a real hivemind DHT (p2pd)
def test_one_outer_round_is_a_nesterov_step_on_the_parameter_change(dht):
    """Alone, a peer's outer round uses its own pseudo-gradient (start - local): SGD with Nesterov momentum m and
    learning rate lr moves the shared parameters by lr x (1 + m) x that change, and the model continues from there."""
    swarm = SwarmConfig(averaging="diloco", target_batch_size=4, outer_every=2, outer_lr=0.5)
    model, outer, optimizer, steps = _diloco(dht, swarm, "diloco-test")
    start = model.weight.detach().clone()
    try:
        local_before_round = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # 8 samples make an epoch once the tracker has seen them (bounded)
            model.loss().backward()
            epoch = optimizer.local_epoch
            local_before_round = model.weight.detach().clone()
            accumulated = optimizer.grad_averager.local_times_accumulated
            steps.step()
            if optimizer.local_epoch != epoch:
                steps.after_new_epoch()
                break
        assert optimizer.local_epoch == 1
        assert accumulated >= 1, "the round closed on its first step: the count's division was not exercised"
        # the change since the round's start, measured after the inner step that closed the round
        inner_step = local_before_round - 0.1 * 2 * (local_before_round - 0.5)
        expected = start - swarm.outer_lr * (1 + OUTER_MOMENTUM) * (start - inner_step)
        assert torch.allclose(outer[0].detach(), expected, atol=1e-5), (outer[0], expected)
        assert torch.equal(model.weight.detach(), outer[0].detach())  # the next round starts from the shared state
        # the pseudo-gradient buffers were consumed: hivemind reset them for the next round
        assert optimizer.grad_averager.local_times_accumulated == 0
    finally:
        optimizer.shutdown()


@pytest.mark.slow  # a real hivemind DHT (p2pd)
def test_a_round_in_progress_never_touches_the_shared_parameters(dht):
    """Inner steps change the model only: what a joiner downloads or the coordinator releases (the outer
    parameters) stays the last round's until the round ends."""
    swarm = SwarmConfig(averaging="diloco", target_batch_size=64, outer_every=4)
    model, outer, optimizer, steps = _diloco(dht, swarm, "diloco-test-2")
    try:
        before = outer[0].detach().clone()
        for _ in range(5):
            model.loss().backward()
            steps.step()
        assert optimizer.local_epoch == 0
        assert torch.equal(outer[0].detach(), before)
        assert not torch.equal(model.weight.detach(), before)
        # what hivemind will divide by its count is the pseudo-gradient times that count
        count = optimizer.grad_averager.local_times_accumulated
        assert count == 5
        assert torch.allclose(outer[0].grad / count, before - model.weight.detach(), atol=1e-6)
        steps.shared_state_into_model()
        assert torch.equal(model.weight.detach(), before)
    finally:
        optimizer.shutdown()


def test_the_epoch_is_one_outer_round_and_old_run_configs_still_load():
    assert SwarmConfig(target_batch_size=2048, averaging="gradients").samples_per_epoch == 2048
    assert SwarmConfig(target_batch_size=2048, averaging="diloco", outer_every=16).samples_per_epoch == 32768
    assert SwarmConfig().averaging == "diloco" and SwarmConfig().samples_per_epoch == 128 * 2048  # the default since 2026-12-03
    # each mode's rounds gather their groups for their own window (docs/benchmarks.md section 10, "a split swarm")
    assert SwarmConfig().round_matchmaking_time == SwarmConfig().outer_matchmaking_time == 5.0
    assert SwarmConfig(averaging="gradients").round_matchmaking_time == SwarmConfig().matchmaking_time == 1.0
    with pytest.raises(ValueError, match="averaging must be one of"):
        SwarmConfig(averaging="gossip")
    config = RunConfig(run_id="r", corpus="c", corpus_digest="d", tokenizer_digest="t", landmarks_digest="l", landmarks_version=1)
    document = json.loads(config.to_json_bytes())
    del document["swarm"]["averaging"]
    document["swarm"]["local_updates"] = True  # a run initialised before issue 13 with --local-updates
    assert RunConfig.from_json_bytes(json.dumps(document).encode()).swarm.averaging == "diloco"
    document["swarm"]["local_updates"] = False
    assert RunConfig.from_json_bytes(json.dumps(document).encode()).swarm.averaging == "gradients"
    # a run initialised before DiLoCo became the default keeps what it was created with: per-step gradients when it
    # names no averaging, and the round length and outer learning rate of then when it names none
    del document["swarm"]["local_updates"]
    assert RunConfig.from_json_bytes(json.dumps(document).encode()).swarm.averaging == "gradients"
    document["swarm"].update(averaging="diloco")
    del document["swarm"]["outer_every"], document["swarm"]["outer_lr"], document["swarm"]["outer_matchmaking_time"]
    document["swarm"]["matchmaking_time"] = 2.0
    old_diloco = RunConfig.from_json_bytes(json.dumps(document).encode()).swarm
    assert (old_diloco.averaging, old_diloco.outer_every, old_diloco.outer_lr) == ("diloco", 16, 0.7)
    assert old_diloco.round_matchmaking_time == 2.0  # its outer rounds gathered groups for --matchmaking-time then
    # and a run initialised today reads back exactly as created
    assert RunConfig.from_json_bytes(config.to_json_bytes()).swarm == SwarmConfig()


def _overlapped(dht, swarm: SwarmConfig, run_id: str):
    """`_diloco` with the outer round overlapped, built as the peer builds it (cairn/peer/node.py make_optimizer)."""
    model = Tiny()
    outer = outer_parameters(model)
    factory, _ = shared_optimizer_factories(TrainingConfig(), swarm)
    optimizer = OverlappedOuterOptimizer(
        dht=dht,
        run_id=run_id,
        target_batch_size=swarm.samples_per_epoch,
        batch_size_per_step=2,
        params=outer,
        optimizer=factory,
        reuse_grad_buffers=True,
        matchmaking_time=0.5,
        averaging_timeout=5,
        verbose=False,
        **overlap_options(request_timeout=0.5),
    )
    inner = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = OverlappedDiLoCoSteps(model, optimizer, outer, inner, torch.optim.lr_scheduler.LambdaLR(inner, lambda _: 1.0))
    return model, outer, optimizer, steps


def _inner_step(weight: torch.Tensor) -> torch.Tensor:
    """Tiny's inner SGD step at lr 0.1: w - 0.1 x 2 (w - 0.5)."""
    return weight - 0.1 * 2 * (weight - 0.5)


@pytest.mark.slow  # a real hivemind DHT (p2pd)
def test_an_overlapped_round_lands_under_the_inner_steps_taken_meanwhile(dht):
    """Overlapped, a lone peer's round does not stop the peer: the step that closes the round returns with the
    model where the inner step left it and the shared parameters untouched; the round's outer step (the Nesterov
    closed form on the change up to that step) lands at a later step, and the model then sits at the new shared
    parameters plus the inner progress made since the round took its pseudo-gradient, none lost, none counted twice."""
    swarm = SwarmConfig(averaging="diloco", target_batch_size=4, outer_every=2, outer_lr=0.5)
    model, outer, optimizer, steps = _overlapped(dht, swarm, "diloco-overlap")
    start = model.weight.detach().clone()
    try:
        deadline = time.monotonic() + 60
        taken_at = None
        while time.monotonic() < deadline and optimizer.local_epoch == 0:
            model.loss().backward()
            steps.step()
        assert optimizer.local_epoch == 1, "no round closed within 60 s"
        taken_at = model.weight.detach().clone()
        # the round is in flight (or finished in the background, not yet applied): nothing waited for it
        assert torch.equal(outer[0].detach(), start)
        assert not torch.equal(taken_at, start)
        expected_outer = start - swarm.outer_lr * (1 + OUTER_MOMENTUM) * (start - taken_at)
        since = taken_at.clone()  # the inner steps taken while the round is in flight, on their own
        inner_steps_since = 0
        while time.monotonic() < deadline and torch.equal(outer[0].detach(), start):
            model.loss().backward()
            steps.step()
            inner_steps_since += 1
            since = _inner_step(since)
        assert not torch.equal(outer[0].detach(), start), "the round's result never landed"
        assert inner_steps_since >= 1
        assert torch.allclose(outer[0].detach(), expected_outer, atol=1e-5), (outer[0], expected_outer)
        # new shared parameters + the progress since the round took its pseudo-gradient (not reset, not doubled)
        assert torch.allclose(model.weight.detach(), expected_outer + (since - taken_at), atol=1e-5), (
            model.weight,
            expected_outer,
            since,
            taken_at,
        )
        assert not torch.equal(model.weight.detach(), outer[0].detach())  # the progress was kept, not reset to the outer
        # the next round's pseudo-gradient counts only what came after the snapshot; on a slow machine the landing
        # step can also be the one that closes the next round, which then takes everything up to here
        if optimizer.local_epoch == 1:
            assert torch.allclose(steps.reference[0], outer[0].detach())
            # the probe is taken here, on the outer parameters (the state the coordinator loads for this epoch), and
            # the inner progress is back in the model afterwards
            probing, before = steps.probe_point(False, False), model.weight.detach().clone()
            assert probing is not None
            with probing:
                assert torch.equal(model.weight.detach(), outer[0].detach())
            assert torch.equal(model.weight.detach(), before)
            # from the next step on, the averager judges the reducers' answers against the swarm's round scale (the
            # newcomer's yardstick, cairn/peer/aggregation.py): (1 - momentum) x the RMS of the outer momentum, after
            # one round that round's pseudo-gradient
            model.loss().backward()
            steps.step()
            round_scale = (1 - OUTER_MOMENTUM) * float((start - taken_at).pow(2).mean().sqrt())
            assert optimizer.grad_averager.plausibility_floor.value == pytest.approx(round_scale, rel=1e-4)
        else:
            assert optimizer.local_epoch == 2
            assert torch.equal(steps.reference[0], model.weight.detach())
    finally:
        optimizer.shutdown()


@pytest.mark.slow  # a real hivemind DHT (p2pd)
def test_overlapped_rounds_in_a_row_sum_every_inner_step_exactly_once(dht):
    """Several overlapped rounds alone, outer lr 1 and the momentum turned off by comparison: with plain averaging a
    lone peer's shared parameters must end where its inner steps took it, minus only what it has not sent yet.
    Sending a stretch of progress twice (or never) would leave them off by that stretch."""
    swarm = SwarmConfig(averaging="diloco", target_batch_size=4, outer_every=2, outer_lr=1.0)
    model, outer, optimizer, steps = _overlapped(dht, swarm, "diloco-overlap-2")
    for group in optimizer.state_averager.optimizer.param_groups:  # plain SGD at lr 1: the outer step is the change
        group["momentum"], group["nesterov"] = 0.0, False
    try:
        trajectory = model.weight.detach().clone()  # where the inner steps alone would take the model
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and optimizer.local_epoch < 3:
            model.loss().backward()
            steps.step()
            trajectory = _inner_step(trajectory)
        assert optimizer.local_epoch >= 3
        # with plain averaging alone, every landing puts the model back on the inner steps' own trajectory
        assert torch.allclose(model.weight.detach(), trajectory, atol=1e-5), (model.weight, trajectory)
        assert not torch.equal(outer[0].detach(), torch.tensor([1.0, -2.0, 3.0]))  # rounds did land
        # leaving waits for a round in flight: the peer keeps the last round's shared state, with plain averaging
        # alone the inner trajectory at that round's snapshot
        taken = steps.reference[0].clone()
        steps.leave()
        assert not optimizer.state_averager.pending_updates
        assert torch.equal(model.weight.detach(), outer[0].detach())
        assert torch.allclose(outer[0].detach(), taken, atol=1e-5)
    finally:
        optimizer.shutdown()


@pytest.mark.slow  # a real hivemind DHT (p2pd)
def test_a_failed_overlapped_round_falls_back_to_what_this_peer_sent(dht):
    """hivemind's fallback after a failed round reloads the accumulators; overlapped, those already hold the next
    round's pseudo-gradient. The averager must restore what the failed round took (divided by its count)."""
    weight = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    weight.grad = torch.tensor([4.0, 6.0])
    averager = OuterGradientAverager(
        [weight], dht=dht, prefix="fallback-test", reuse_grad_buffers=True, start=True, min_matchmaking_time=0.5, request_timeout=0.5
    )
    try:
        averager.accumulate_grads_(2)
        averager.accumulate_grads_(2)  # the .grad holds the pseudo-gradient x 2, as DiLoCoSteps writes it
        control = averager.step(wait=False, timeout=2)  # alone: no group forms, the round fails
        assert averager.rounds_taken == 1
        with pytest.raises(BaseException):
            control.result(timeout=10)
        weight.grad.copy_(torch.tensor([100.0, 100.0]))  # the next round's pseudo-gradient, meanwhile
        averager.accumulate_grads_(2)
        averager.load_accumulators_into_averager_()  # hivemind's fallback (_load_local_gradients_into_optimizer)
        with averager.get_tensors() as averaged:
            assert torch.equal(averaged[0], torch.tensor([2.0, 3.0]))
        assert averager.rounds_taken == 1  # a fallback is not a new round
        averager.notify_used_averaged_gradients()  # the failed round's outer step used it: back to the accumulators
        averager.load_accumulators_into_averager_()
        with averager.get_tensors() as averaged:
            assert torch.equal(averaged[0], torch.tensor([100.0, 100.0]))
    finally:
        averager.shutdown()


def test_the_overlapped_averagers_speak_hivemind_s_protocol():
    """hivemind names RPC handlers after the servicer's class: with the subclasses' own names, the coordinator's plain
    TrainingStateAverager could not download an overlapped DiLoCo peer's state ("failed to negotiate protocol"; no
    release, no spot check in such a run). The subclasses register under hivemind's names."""
    from hivemind.optim.grad_averager import GradientAverager
    from hivemind.optim.state_averager import TrainingStateAverager

    for ours, theirs in ((OuterStateAverager, TrainingStateAverager), (OuterGradientAverager, GradientAverager)):
        for namespace in (None, "run"):
            for method in ("rpc_download_state", "rpc_join_group", "rpc_aggregate_part"):
                assert ours._get_handle_name(namespace, method) == theirs._get_handle_name(namespace, method)
        assert ours._get_handle_name(None, "rpc_download_state") == f"{theirs.__name__}.rpc_download_state"


def test_a_probe_follows_only_an_update_this_step_s_round_produced():
    """Per-step averaging: right after a round's update the model is the epoch's shared state; an epoch reached by a
    state download is not (hivemind may serve an epoch with the parameters of the one before: an honest late joiner
    failed a spot check so in CI), nor is a step that changed no epoch."""
    steps = GradientSteps(Tiny(), optimizer=None)
    assert steps.probe_point(epoch_changed=True, round_ended_here=True) is not None
    assert steps.probe_point(epoch_changed=True, round_ended_here=False) is None  # a state download
    assert steps.probe_point(epoch_changed=False, round_ended_here=True) is None  # no new epoch: nothing to claim


@pytest.mark.slow  # two real hivemind averagers (p2pd) and an all-reduce over loopback
def test_a_newcomer_with_a_small_pseudo_gradient_takes_the_honest_average_given_the_floor():
    """The CI failure of 2026-12-03, reproduced with two real averagers: a newcomer's pseudo-gradient 1e-4 of the
    veteran's (a few inner steps, still warming up). Judged by its own values (floor 0), the newcomer refuses the
    veteran's honest reducer ('5000x larger than ours'), keeps its own values for that half and ends apart from the
    veteran. Given the floor its DiLoCo steps set (the outer state's round scale), both end on the same average."""
    install_aggregation("centered_clip")  # the run's default; with two peers, the mean of the finite parts
    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(3000, generator=generator), 1e-4 * torch.randn(3000, generator=generator)]
    dhts = linked_dhts(2)
    averagers = []
    try:
        for dht, grad in zip(dhts, grads):
            parameter = torch.nn.Parameter(torch.zeros(3000))
            parameter.grad = grad.clone()
            averagers.append(
                PeerGradientAverager(
                    [parameter],
                    dht=dht,
                    prefix="newcomer-floor",
                    start=True,
                    target_group_size=2,
                    min_group_size=2,
                    min_matchmaking_time=2.0,
                    request_timeout=1.0,
                    next_chunk_timeout=5.0,
                    part_size_bytes=4096,
                )
            )

        def average(newcomer_floor: float) -> list[torch.Tensor]:
            averagers[1].plausibility_floor.value = newcomer_floor
            for averager in averagers:
                averager.accumulate_grads_(batch_size=1)
            controls = [averager.step(wait=False, timeout=60) for averager in averagers]
            for control in controls:
                control.result(timeout=90)
            results = []
            for averager in averagers:
                with averager.get_tensors() as (averaged,):
                    results.append(averaged.clone())
            return results

        mean = (grads[0] + grads[1]) / 2
        veteran, newcomer = average(newcomer_floor=0.0)
        assert torch.allclose(veteran, mean, atol=1e-5)
        assert not torch.allclose(newcomer, mean, atol=1e-3)  # the bug: part of it is the newcomer's own tiny values
        veteran, newcomer = average(newcomer_floor=(1 - OUTER_MOMENTUM) * float(grads[0].pow(2).mean().sqrt()))
        assert torch.allclose(veteran, mean, atol=1e-5) and torch.allclose(newcomer, mean, atol=1e-5)
    finally:
        shut_down(averagers, dhts)
        install_aggregation("mean")


@pytest.mark.slow  # a real hivemind DHT (p2pd)
def test_a_state_caught_up_between_steps_keeps_the_unsent_inner_progress_once(dht):
    """After a failed round an overlapped peer downloads the swarm's state between two steps (cairn/peer/state_sync.py
    catch_up; hivemind copies it into the outer tensors). The model must continue from that state plus the inner
    progress this peer has not sent yet, and the next step must not carry that progress a second time."""
    swarm = SwarmConfig(averaging="diloco", target_batch_size=10**6, outer_every=2, outer_lr=0.5)  # no round closes
    model, outer, optimizer, steps = _overlapped(dht, swarm, "diloco-catch-up")
    try:
        start = model.weight.detach().clone()
        for _ in range(2):
            model.loss().backward()
            steps.step()
        progress = model.weight.detach() - start  # unsent: no round took it
        swarm_state = torch.tensor([0.25, 0.75, -1.0])
        with torch.no_grad():
            outer[0].copy_(swarm_state)  # what TrainingStateAverager.load_state_from_peers does to the outer tensors
        steps.state_loaded()
        assert torch.allclose(model.weight.detach(), swarm_state + progress, atol=1e-6)
        before = model.weight.detach().clone()
        model.loss().backward()
        steps.step()
        assert torch.allclose(model.weight.detach(), _inner_step(before), atol=1e-6)  # an inner step, nothing carried again
        assert torch.allclose(
            outer[0].grad / optimizer.grad_averager.local_times_accumulated, swarm_state - model.weight.detach(), atol=1e-5
        )
    finally:
        optimizer.shutdown()


@pytest.mark.slow  # two real hivemind averagers (p2pd)
@pytest.mark.parametrize("shares", [False, True])
def test_a_peer_s_gradient_buffers_are_not_served_to_a_joiner(shares):
    """hivemind.Optimizer.load_state_from_peers also downloads the gradient averager's buffers (fp32, the parameters'
    size) and then discards them. A Cairn peer's gradient averager serves none; hivemind's default (shares=True, the
    control) hands them over."""
    dhts = linked_dhts(2)
    averagers = []
    try:
        for dht in dhts:
            parameter = torch.nn.Parameter(torch.zeros(1000))
            parameter.grad = torch.ones(1000)
            options = dict(allow_state_sharing=True) if shares else {}
            averagers.append(PeerGradientAverager([parameter], dht=dht, prefix="grad-state", start=True, request_timeout=1.0, **options))
        averagers[0].state_sharing_priority = 1.0  # declared for download within hivemind's declare period, if sharing
        deadline = time.monotonic() + 5  # the control's donor is found at the first try
        loaded = None
        while loaded is None and time.monotonic() < deadline:
            loaded = averagers[1].load_state_from_peers(timeout=5)
            if loaded is None:
                time.sleep(1.0)
        assert (loaded is not None) is shares, loaded
    finally:
        shut_down(averagers, dhts)


@pytest.mark.slow  # two real hivemind averagers (p2pd) and an all-reduce over loopback
def test_top_k_rounds_average_each_peer_s_largest_values_and_carry_the_rest_on_the_sparse_wire():
    """`--outer-topk`: each round a peer sends the largest 2 % of (its pseudo-gradient + what it held back), in the
    sparse 8-bit format, and the reducers' replies come back in it too. Both peers end each round on the average of
    what was sent; what each held back is the rest of its own, and the next round sends the largest of that."""
    import multiprocessing as mp

    import bitsandbytes.functional  # noqa: F401  (in the main process before the averagers fork, as the peer does)

    from cairn.peer.compression import SparseBlockwiseQuantization, install_wire_formats
    from cairn.peer.instrumentation import CountingCompression, install_traffic_taps

    install_wire_formats()
    install_aggregation("centered_clip")  # the run's default: with two peers, the mean of the finite parts
    size, fraction = 20_000, 0.02
    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(size, generator=generator) * 1e-3 for _ in range(2)]
    sent_bytes, received_bytes = mp.Value("q", 0), mp.Value("q", 0)
    install_traffic_taps(sent_bytes, received_bytes)  # before the averagers fork: the replies are counted there
    dhts = linked_dhts(2)
    averagers, parameters = [], []
    try:
        for dht, grad in zip(dhts, grads):
            parameters.append(torch.nn.Parameter(torch.zeros(size)))
            parameters[-1].grad = grad.clone()
            averagers.append(
                PeerGradientAverager(
                    [parameters[-1]],
                    dht=dht,
                    prefix="top-k",
                    start=True,
                    topk=fraction,
                    compression=CountingCompression(SparseBlockwiseQuantization(), sent_bytes, received_bytes),
                    target_group_size=2,
                    min_group_size=2,
                    min_matchmaking_time=2.0,
                    request_timeout=1.0,
                    next_chunk_timeout=5.0,
                    part_size_bytes=1 << 14,
                )
            )

        def one_round() -> list[torch.Tensor]:
            for averager in averagers:
                averager.accumulate_grads_(batch_size=1)  # reuse_grad_buffers is off: the .grad is added once
            controls = [averager.step(wait=False, timeout=60) for averager in averagers]
            for control in controls:
                control.result(timeout=90)
            results = []
            for averager in averagers:
                with averager.get_tensors() as (averaged,):
                    results.append(averaged.clone())
            return results

        def top_k(values: torch.Tensor) -> torch.Tensor:
            kept = torch.zeros_like(values)
            chosen = values.abs().topk(math.ceil(fraction * size)).indices  # as ErrorFeedbackTopK counts k
            kept[chosen] = values[chosen]
            return kept

        first = [top_k(grad) for grad in grads]
        results = one_round()
        expected = (first[0] + first[1]) / 2
        for result, averager, grad, sent in zip(results, averagers, grads, first):
            assert torch.equal(result == 0, expected == 0)  # nonzero only where a peer sent a value
            assert float((result - expected).norm() / expected.norm()) < 0.03  # 8-bit values
            assert torch.allclose(averager.error_feedback.held[0] + sent, grad)  # the rest is held, nothing lost
            assert math.isclose(averager.error_feedback.held_norm(), float((grad - sent).norm()), rel_tol=1e-5)  # the summary's
        assert sent_bytes.value < 0.25 * 2 * size  # blockwise 8-bit would send a byte per value, each way
        # the next round (no new pseudo-gradient) sends the largest of what was held back
        second = [top_k(grad - sent) for grad, sent in zip(grads, first)]
        for parameter in parameters:
            parameter.grad.zero_()
        results = one_round()
        expected = (second[0] + second[1]) / 2
        for result in results:
            assert float((result - expected).norm() / expected.norm()) < 0.03
    finally:
        shut_down(averagers, dhts)
        install_aggregation("mean")
