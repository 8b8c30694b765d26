"""DiLoCo's step (cairn/peer/diloco.py) on known answers, with a real hivemind.Optimizer on an in-process DHT."""

from __future__ import annotations

import json
import time

import hivemind
import pytest
import torch

from cairn.peer.diloco import DiLoCoSteps, outer_parameters
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
    optimizer = hivemind.Optimizer(dht=dht, run_id=run_id, target_batch_size=swarm.samples_per_epoch, batch_size_per_step=2,
                                   params=outer, optimizer=factory, reuse_grad_buffers=True,
                                   matchmaking_time=0.5, averaging_timeout=5, verbose=False)
    inner = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, outer, optimizer, DiLoCoSteps(model, optimizer, outer, inner, torch.optim.lr_scheduler.LambdaLR(inner, lambda _: 1.0))


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
    assert SwarmConfig(target_batch_size=2048).samples_per_epoch == 2048
    assert SwarmConfig(target_batch_size=2048, averaging="diloco", outer_every=16).samples_per_epoch == 32768
    with pytest.raises(ValueError, match="averaging must be one of"):
        SwarmConfig(averaging="gossip")
    config = RunConfig(run_id="r", corpus="c", corpus_digest="d", tokenizer_digest="t", landmarks_digest="l", landmarks_version=1)
    document = json.loads(config.to_json_bytes())
    del document["swarm"]["averaging"]
    document["swarm"]["local_updates"] = True  # a run initialised before issue 13 with --local-updates
    assert RunConfig.from_json_bytes(json.dumps(document).encode()).swarm.averaging == "diloco"
    document["swarm"]["local_updates"] = False
    assert RunConfig.from_json_bytes(json.dumps(document).encode()).swarm.averaging == "gradients"
