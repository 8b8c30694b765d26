"""Each gradient compression mode really round-trips through hivemind's (de)serialisation, and the
counting wrapper the peer uses for its byte metrics counts what it sends."""

from __future__ import annotations

import multiprocessing as mp

import pytest
import torch
from hivemind.compression import CompressionInfo, deserialize_torch_tensor

from peer.instrumentation import COMPRESSION_BY_NAME, make_compression

# relative L2 error each mode may introduce on a gradient-like tensor, and bytes per value at most
BOUNDS = {"none": (0.0, 4.1), "fp16": (1e-3, 2.1), "uniform8": (0.15, 1.2), "blockwise8": (0.03, 1.2)}


@pytest.mark.parametrize("mode", sorted(COMPRESSION_BY_NAME))
def test_compression_round_trips_within_its_error_and_size(mode: str):
    import bitsandbytes.functional  # noqa: F401  (the peer imports it before averaging; so do we)

    torch.manual_seed(0)
    tensor = torch.randn(1 << 16) * 1e-3
    sent, received = mp.Value("q", 0), mp.Value("q", 0)
    compression = make_compression(mode, sent, received)
    serialized = compression.compress(tensor, CompressionInfo.from_tensor(tensor))
    restored = deserialize_torch_tensor(serialized)
    max_error, max_bytes_per_value = BOUNDS[mode]
    relative_error = float((restored - tensor).norm() / tensor.norm())
    assert restored.shape == tensor.shape
    assert relative_error <= max_error, relative_error
    assert sent.value == serialized.ByteSize() <= max_bytes_per_value * tensor.numel()


def test_eight_bit_modes_are_smaller_than_fp16_and_blockwise_is_more_accurate_than_uniform():
    tensor = torch.randn(1 << 16)
    sizes, errors = {}, {}
    for mode in ("fp16", "uniform8", "blockwise8"):
        compression = make_compression(mode, mp.Value("q", 0), mp.Value("q", 0))
        serialized = compression.compress(tensor, CompressionInfo.from_tensor(tensor))
        sizes[mode] = serialized.ByteSize()
        errors[mode] = float((deserialize_torch_tensor(serialized) - tensor).norm() / tensor.norm())
    assert sizes["blockwise8"] < sizes["fp16"] and sizes["uniform8"] < sizes["fp16"]
    assert errors["blockwise8"] < errors["uniform8"]
