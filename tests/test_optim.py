"""AdamW toward the start (L2-SP) and the one optimizer/schedule definition that peers and the coordinator share."""

from __future__ import annotations

import pytest
import torch
from hivemind.optim.state_averager import dump_optimizer_state, load_optimizer_state

from cairn.training.optim import AdamWTowardStart
from cairn.protocol.run_config import TrainingConfig
from cairn.training.task import lr_factor, optimizer_factory, scheduler_factory


def test_the_pull_settles_where_the_gradient_balances_it():
    """A constant push of one Adam step (lr) per update against a pull of lr * pull * (p - start), applied after the step:
    at equilibrium lr = lr * pull * (p + lr - start), so p = start + 1/pull - lr."""
    parameter = torch.nn.Parameter(torch.ones(3))
    optimizer = AdamWTowardStart([parameter], lr=0.05, start_pull=2.0)
    for _ in range(400):
        optimizer.zero_grad()
        (-parameter.sum()).backward()
        optimizer.step()
    torch.testing.assert_close(parameter.detach(), torch.full((3,), 1 + 1 / 2.0 - 0.05), atol=0.01, rtol=0)
    plain = torch.nn.Parameter(torch.ones(3))  # no pull: AdamW walks on
    adamw = AdamWTowardStart([plain], lr=0.05, start_pull=0.0)
    for _ in range(400):
        adamw.zero_grad()
        (-plain.sum()).backward()
        adamw.step()
    assert float(plain.detach().min()) > 15


def test_the_start_travels_with_the_state_dict():
    source = torch.nn.Parameter(torch.arange(4.0))
    optimizer = AdamWTowardStart([source], lr=0.1, start_pull=1.0)
    target = torch.nn.Parameter(torch.zeros(4))
    restored = AdamWTowardStart([target], lr=0.1, start_pull=1.0)
    restored.load_state_dict(optimizer.state_dict())
    torch.testing.assert_close(restored.start[0], torch.arange(4.0))
    wrong = AdamWTowardStart([torch.nn.Parameter(torch.zeros(5))], lr=0.1)
    with pytest.raises(ValueError, match="start point does not match"):
        wrong.load_state_dict(optimizer.state_dict())


def test_a_peer_state_unpacks_into_the_coordinators_optimizer():
    """hivemind sends a flat list and unpacks it into the receiver's own structure: the coordinator's state loader
    must build the peers' optimizer and schedule, or every value after the first difference lands in the wrong slot
    (measured: a state loader without the scheduler could not load any state once the start point existed)."""
    config = TrainingConfig()
    peer_parameter, coordinator_parameter = torch.nn.Parameter(torch.randn(6)), torch.nn.Parameter(torch.zeros(6))
    peer = optimizer_factory(config)([peer_parameter])
    scheduler_factory(config)(peer)
    peer_parameter.grad = torch.randn(6)
    peer.step()
    coordinator = optimizer_factory(config)([coordinator_parameter])
    scheduler_factory(config)(coordinator)
    coordinator_parameter.grad = torch.zeros(6)
    coordinator.step()
    metadata, tensors = dump_optimizer_state(peer)
    load_optimizer_state(coordinator, metadata, tensors)
    torch.testing.assert_close(coordinator.start[0], peer.start[0])
    torch.testing.assert_close(coordinator.state[coordinator_parameter]["exp_avg"], peer.state[peer_parameter]["exp_avg"])


def test_the_schedule_is_counted_in_updates():
    """The swarm that trained nothing: warm-up counted in samples gave a 2,048-sample global step 1.5 updates of it."""
    config = TrainingConfig(warmup_updates=20)
    assert lr_factor(0, config) == pytest.approx(1 / 20)
    assert lr_factor(9, config) == pytest.approx(0.5)
    assert lr_factor(19, config) == 1.0 and lr_factor(10_000, config) == 1.0
