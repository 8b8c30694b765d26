"""The hivemind internals Cairn patches are checked before use (cairn/network/hivemind_contract.py)."""

from __future__ import annotations

import pytest

from cairn.network import hivemind_contract
from cairn.protocol.errors import CairnError


def test_the_installed_hivemind_has_everything_cairn_patches():
    assert hivemind_contract.missing_internals() == []
    hivemind_contract.check_hivemind.cache_clear()
    assert hivemind_contract.check_hivemind() == hivemind_contract.HIVEMIND_TESTED


def test_a_hivemind_without_them_is_refused_in_one_line(monkeypatch):
    from hivemind.averaging import allreduce
    from hivemind.compression import serialization

    monkeypatch.delattr(allreduce, "serialize_torch_tensor")
    monkeypatch.setattr(serialization, "_BASE_COMPRESSION_TYPES", {})
    monkeypatch.setattr(hivemind_contract, "ROUND_MESSAGES", hivemind_contract.ROUND_MESSAGES + ("Averaged pseudo-gradients",))
    hivemind_contract.check_hivemind.cache_clear()
    try:
        with pytest.raises(CairnError) as error:
            hivemind_contract.check_hivemind()
    finally:
        hivemind_contract.check_hivemind.cache_clear()
    message = str(error.value)
    assert "\n" not in message and "pip install hivemind==1.1.12" in message
    for missing in ("allreduce.serialize_torch_tensor", "_BASE_COMPRESSION_TYPES", "'Averaged pseudo-gradients'"):
        assert missing in message, message


def test_a_reducer_whose_internals_changed_is_refused(monkeypatch):
    """aggregation.py re-implements TensorPartReducer.accumulate_part: a hivemind whose reducer changed shape is refused."""
    from hivemind.averaging import partition

    async def accumulate_part(self, sender_index, part_index, tensor_part, weight=1.0, extra=None):
        return tensor_part

    monkeypatch.setattr(partition.TensorPartReducer, "accumulate_part", accumulate_part)
    missing = hivemind_contract.missing_internals()
    assert any(item.startswith("TensorPartReducer.accumulate_part(") for item in missing), missing
