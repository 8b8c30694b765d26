"""The spot check's second opinion (cairn/coordinator/spot_checks.py): before a failed check takes credit back, the
probe is recomputed on the state the peer itself serves. The targeted download is real in tests/test_trusted_state.py."""

from __future__ import annotations

import pytest
import torch

from cairn.coordinator.spot_checks import judge_probe, parameters_of, parameters_swapped


def _never() -> float | None:
    raise AssertionError("a probe the loaded state reproduces needs no second opinion")


def test_a_probe_the_loaded_state_reproduces_passes_without_asking_the_peer():
    verdict = judge_probe(3.00, 3.03, _never)
    assert verdict.passed and not verdict.on_own_state and verdict.recomputed == 3.03


def test_a_probe_that_matches_the_peer_s_own_state_passes_on_it():
    """The split swarm of docs/benchmarks.md section 10: p3 claimed 2.920 at epoch 4, the loaded state gave 2.329."""
    verdict = judge_probe(2.920, 2.329, lambda: 2.921)
    assert verdict.passed and verdict.on_own_state and verdict.recomputed == 2.921


@pytest.mark.parametrize("own", [None, 2.5])  # served nothing at that epoch; or a state that does not reproduce it
def test_a_probe_neither_state_reproduces_fails_on_the_loaded_one(own):
    verdict = judge_probe(2.920, 2.329, lambda: own)
    assert not verdict.passed and not verdict.on_own_state and verdict.recomputed == 2.329


def _model() -> torch.nn.Module:
    return torch.nn.Linear(3, 2)


def test_a_served_state_is_used_only_at_the_probe_s_epoch_with_the_model_s_shapes_and_finite():
    model = _model()
    good = [torch.ones(2, 3), torch.zeros(2), torch.ones(5)]  # parameters, then optimizer statistics
    chosen = parameters_of(({"epoch": 4}, good), 4, model)
    assert chosen is not None and len(chosen) == 2 and torch.equal(chosen[0], good[0])
    assert parameters_of(None, 4, model) is None
    assert parameters_of(({"epoch": 5}, good), 4, model) is None  # it moved on
    assert parameters_of(("not a dict", good), 4, model) is None
    assert parameters_of(({"epoch": 4}, good[:1]), 4, model) is None  # too few tensors
    assert parameters_of(({"epoch": 4}, [torch.ones(3, 2), torch.zeros(2)]), 4, model) is None  # wrong shape
    assert parameters_of(({"epoch": 4}, [torch.full((2, 3), float("nan")), torch.zeros(2)]), 4, model) is None


def test_the_model_gets_its_own_parameters_back_after_the_second_opinion_even_on_error():
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    served = [torch.full((2, 3), 7.0), torch.full((2,), 7.0)]
    with parameters_swapped(model, served):
        assert all(torch.equal(p, v) for p, v in zip(model.parameters(), served))
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    with pytest.raises(RuntimeError), parameters_swapped(model, served):
        raise RuntimeError("the evaluation broke")
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
