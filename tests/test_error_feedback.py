"""Top-k with error feedback (cairn/peer/error_feedback.py): what a round sends, and that nothing is ever lost."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cairn.peer.error_feedback import ErrorFeedbackTopK


def test_a_round_sends_the_largest_values_of_each_tensor_and_holds_the_rest():
    feedback = ErrorFeedbackTopK(0.25)
    first, second = torch.tensor([0.1, -4.0, 0.2, 3.0, -0.3, 0.05, 0.0, 1.0]), torch.tensor([[5.0, -0.5], [0.25, 0.1]])
    tensors = [first.clone(), second.clone()]
    feedback.sparsify_(tensors)
    assert torch.equal(tensors[0], torch.tensor([0.0, -4.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0]))  # k = 2 of 8
    assert torch.equal(tensors[1], torch.tensor([[5.0, 0.0], [0.0, 0.0]]))  # k = 1 of 4: every tensor has a share
    assert torch.equal(feedback.held[0] + tensors[0], first) and torch.equal(feedback.held[1] + tensors[1], second)
    # the next round: a held value that grew past this round's new ones is sent
    tensors = [torch.tensor([0.0, 0.0, 0.0, 0.0, -0.3, 0.0, 0.0, 0.2]), torch.zeros(2, 2)]
    feedback.sparsify_(tensors)
    assert torch.equal(tensors[0], torch.tensor([0.0, 0.0, 0.0, 0.0, -0.6, 0.0, 0.0, 1.2]))
    assert torch.equal(tensors[1], torch.tensor([[0.0, -0.5], [0.0, 0.0]]))


@settings(max_examples=40, deadline=None)
@given(
    fraction=st.floats(0.01, 1.0),
    rounds=st.lists(st.lists(st.floats(-1e3, 1e3, width=32), min_size=12, max_size=12), min_size=1, max_size=6),
)
def test_what_was_sent_plus_what_is_held_is_everything_computed(fraction: float, rounds: list[list[float]]):
    feedback = ErrorFeedbackTopK(fraction)
    computed, sent = torch.zeros(12, dtype=torch.float64), torch.zeros(12, dtype=torch.float64)
    for values in rounds:
        tensor = torch.tensor(values)
        computed += tensor.double()
        feedback.sparsify_([tensor])
        assert int((tensor != 0).sum()) <= max(1, math.ceil(fraction * 12))
        sent += tensor.double()
    assert torch.allclose(sent + feedback.held[0].double(), computed, atol=1e-2)


def test_a_fraction_outside_0_1_is_refused():
    for fraction in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="top-k fraction"):
            ErrorFeedbackTopK(fraction)


def test_the_option_is_diloco_s_and_its_pseudo_gradients_leave_out_their_zeros_on_the_wire():
    from cairn.protocol.run_config import SwarmConfig

    assert SwarmConfig().outer_topk == 0 and SwarmConfig().wire_compression == "blockwise8"  # off unless asked for
    assert SwarmConfig(outer_topk=0.016).wire_compression == "sparse8"
    assert SwarmConfig(outer_topk=0.016, compression="fp16").wire_compression == "fp16"
    assert SwarmConfig.from_json({"averaging": "diloco"}).outer_topk == 0  # runs from before the option: every value
    with pytest.raises(ValueError, match="needs averaging diloco"):
        SwarmConfig(averaging="gradients", outer_topk=0.016)
    with pytest.raises(ValueError, match="trimmed_mean"):
        SwarmConfig(outer_topk=0.016, aggregation="trimmed_mean")
    with pytest.raises(ValueError, match="outer_topk must be <= 1"):
        SwarmConfig(outer_topk=2.0)


def test_coordinator_init_refuses_top_k_with_trimmed_mean_in_one_usage_line(tmp_path):
    import subprocess
    import sys

    argv = ["coordinator", "init", "--workdir", "w", "--outer-topk", "0.016", "--aggregation", "trimmed_mean"]
    result = subprocess.run([sys.executable, "-m", "cairn.cli", *argv], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "trimmed_mean aggregation drops every value only one peer sent" in result.stderr
    assert not any(tmp_path.iterdir()), "nothing may be created for a refused command"
