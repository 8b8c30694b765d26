"""Each gradient compression mode really round-trips through hivemind's (de)serialisation, and the
counting wrapper the peer uses for its byte metrics counts what it sends."""

from __future__ import annotations

import multiprocessing as mp

import pytest
import torch
from hivemind.compression import CompressionInfo, deserialize_torch_tensor

from cairn.peer.compression import COMPRESSION_BY_NAME, make_state_compression
from cairn.peer.instrumentation import CountingCompression, make_compression

# relative L2 error each mode may introduce on a gradient-like tensor, and bytes per value at most
BOUNDS = {"none": (0.0, 4.1), "fp16": (1e-3, 2.1), "uniform8": (0.15, 1.2), "blockwise8": (0.03, 1.2), "sparse8": (0.03, 1.2)}


@pytest.mark.parametrize("mode", sorted(COMPRESSION_BY_NAME))
def test_compression_round_trips_within_its_error_and_size(mode: str):
    import bitsandbytes.functional  # noqa: F401  (the peer imports it before averaging; so do we)

    from cairn.peer.compression import install_wire_formats

    install_wire_formats()  # as the peer does: sparse8 travels in a slot of hivemind's registry

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


def _adam_state_after_small_gradients(steps: int = 16) -> tuple[torch.nn.Parameter, torch.optim.AdamW]:
    """An AdamW state like the tiny encoder's: gradients of ~1e-4, so second moments of ~1e-8."""
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(1 << 14) * 0.02)
    optimizer = torch.optim.AdamW([weight], lr=1e-3)
    for _ in range(steps):
        weight.grad = torch.randn_like(weight) * 1e-4
        optimizer.step()
    return weight, optimizer


def _next_update_after_transfer(compression) -> tuple[torch.Tensor, torch.Tensor]:
    """(the next AdamW update without a transfer, the same update after the state went through `compression`)."""
    from hivemind.compression import TensorRole

    weight, optimizer = _adam_state_after_small_gradients()
    state = optimizer.state[weight]
    received = {}
    for name, role in (("param", TensorRole.PARAMETER), ("exp_avg", TensorRole.OPTIMIZER), ("exp_avg_sq", TensorRole.OPTIMIZER)):
        tensor = weight.detach() if name == "param" else state[name]
        received[name] = deserialize_torch_tensor(compression.compress(tensor, CompressionInfo.from_tensor(tensor, role=role)))
    gradient = torch.randn_like(weight) * 1e-4
    before = weight.detach().clone()
    weight.grad = gradient
    optimizer.step()
    expected = weight.detach() - before
    with torch.no_grad():
        weight.copy_(received["param"])
    state["exp_avg"], state["exp_avg_sq"] = received["exp_avg"], received["exp_avg_sq"]
    state["step"] -= 1
    start = weight.detach().clone()
    weight.grad = gradient
    optimizer.step()
    return expected, weight.detach() - start


def test_state_transfers_keep_adam_second_moments_so_a_joiner_steps_like_its_donor():
    """fp16 flushes Adam's second moments to zero: the joiner's next update was ~25x too large (and stays inflated
    for hundreds of steps while beta2 = 0.999 refills them)."""
    from hivemind.compression import Float16Compression

    expected, after_state_compression = _next_update_after_transfer(make_state_compression("fp16"))
    assert torch.allclose(after_state_compression, expected, rtol=1e-3, atol=2e-8)  # fp32 subtraction noise
    expected, after_plain_fp16 = _next_update_after_transfer(Float16Compression())
    assert after_plain_fp16.abs().mean() > 10 * expected.abs().mean()  # the failure make_state_compression prevents


def test_diloco_outer_momentum_survives_an_fp16_state_transfer():
    """DiLoCo's shared optimizer (SGD, Nesterov momentum 0.9, lr 0.7) after outer steps on sparse pseudo-gradients
    (rows a batch touched, ~1e-3, the rest exactly 0): a joiner that received the momentum in fp16 takes the same
    next outer step as its donor, to fp16's precision, and untouched rows stay exactly where they were."""
    from hivemind.compression import TensorRole

    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(512, 64) * 0.05)
    outer = torch.optim.SGD([weight], lr=0.7, momentum=0.9, nesterov=True)

    def pseudo_gradient() -> torch.Tensor:
        rows = torch.rand(512, 1) < 0.2  # the tokens this round's batches touched
        return torch.where(rows, torch.randn(512, 64) * 1e-3, torch.zeros(512, 64))

    for _ in range(6):
        weight.grad = pseudo_gradient()
        outer.step()
    momentum = outer.state[weight]["momentum_buffer"]
    compression = make_state_compression("fp16", "fp16")
    info = CompressionInfo.from_tensor(momentum, role=TensorRole.OPTIMIZER)
    received = deserialize_torch_tensor(compression.compress(momentum, info))
    assert compression.estimate_compression_ratio(info) == 0.5  # 2 bytes per value instead of 4
    step = pseudo_gradient()
    before = weight.detach().clone()
    weight.grad = step
    outer.step()
    expected = weight.detach() - before
    with torch.no_grad():
        weight.copy_(before)
    outer.state[weight]["momentum_buffer"] = received  # the joiner: the same step from the momentum it received
    weight.grad = step
    outer.step()
    after_transfer = weight.detach() - before
    untouched = (expected == 0).all(dim=1)
    assert untouched.any() and (after_transfer[untouched] == 0).all()  # nothing moves where nothing was learned
    error = (after_transfer - expected).norm() / expected.norm()
    assert error < 1e-3, error  # measured 1.4e-4: fp16 precision, on a step of ~1e-3
    # and it is far below what the joiner already accepts: its parameters themselves arrive in fp16
    parameter_rounding = (before.half().float() - before).abs().max()
    assert (after_transfer - expected).abs().max() < 0.2 * parameter_rounding  # measured 1.1e-6 against 6.1e-5


def test_state_averaging_compression_counts_its_bytes_per_role():
    """Parameters go at 2 bytes per value, optimizer statistics at 4, and the counting wrapper sees both."""
    from hivemind.compression import TensorRole

    tensor = torch.randn(1 << 12)
    sent = mp.Value("q", 0)
    compression = CountingCompression(make_state_compression("fp16"), sent, mp.Value("q", 0))
    parameter = compression.compress(tensor, CompressionInfo.from_tensor(tensor, role=TensorRole.PARAMETER))
    statistic = compression.compress(tensor, CompressionInfo.from_tensor(tensor, role=TensorRole.OPTIMIZER))
    assert parameter.ByteSize() < 2.1 * tensor.numel() < 4 * tensor.numel() <= statistic.ByteSize()
    assert sent.value == parameter.ByteSize() + statistic.ByteSize()


def _two_peer_adam(compression, rounds: int = 20) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two peers averaging gradients along hivemind's all-reduce path, then stepping AdamW. Each owns half: the
    other peer sends its part through `compression`; the owner averages it with its own and replies with
    the delta, serialised by compression type through hivemind's registry (as allreduce.py does); the sender
    adds the delta to its own gradient. Every fourth parameter (an unseen token's embedding, say) is never
    touched by any batch. Returns (peer A's parameters, peer B's, the untouched mask)."""
    from hivemind.compression import serialize_torch_tensor

    torch.manual_seed(0)
    size = 1 << 14
    untouched = torch.zeros(size, dtype=torch.bool)
    untouched[::4] = True
    halves = (slice(0, size // 2), slice(size // 2, None))
    weights = [torch.zeros(size, requires_grad=True) for _ in range(2)]
    optimizers = [torch.optim.AdamW([w], lr=2e-3) for w in weights]
    for _ in range(rounds):
        gradients = [torch.randn(size).masked_fill(untouched, 0.0) * 1e-3 for _ in range(2)]
        received = [torch.empty(size), torch.empty(size)]
        for owner, half in enumerate(halves):
            sender = 1 - owner
            sent = compression.compress(gradients[sender][half], CompressionInfo.from_tensor(gradients[sender][half]))
            part = deserialize_torch_tensor(sent)
            averaged = (part + gradients[owner][half]) / 2
            received[owner][half] = averaged
            received[sender][half] = gradients[sender][half] + deserialize_torch_tensor(
                serialize_torch_tensor(averaged - part, sent.compression)
            )
        for weight, optimizer, gradient in zip(weights, optimizers, received):
            weight.grad = gradient
            optimizer.step()
    return weights[0].detach(), weights[1].detach(), untouched


def test_blockwise_keeps_exact_zeros_so_parameters_no_batch_touched_stay_put(monkeypatch):
    """bitsandbytes' CPU quantizer rounds 0 to 2e-5 * absmax; Adam turns that into full random steps."""
    import bitsandbytes.functional  # noqa: F401
    from hivemind.compression import BlockwiseQuantization, serialization

    from cairn.peer.compression import install_wire_formats

    tensor = torch.randn(1 << 14) * 1e-3
    tensor[::3] = 0.0
    ours = deserialize_torch_tensor(COMPRESSION_BY_NAME["blockwise8"]().compress(tensor, CompressionInfo.from_tensor(tensor)))
    stock = deserialize_torch_tensor(BlockwiseQuantization().compress(tensor, CompressionInfo.from_tensor(tensor)))
    assert torch.all(ours[::3] == 0) and not torch.all(stock[::3] == 0)
    assert torch.equal(ours[tensor != 0], stock[tensor != 0])  # everything else exactly as hivemind sends it

    monkeypatch.setitem(serialization._BASE_COMPRESSION_TYPES, "BLOCKWISE_8BIT", BlockwiseQuantization())
    a, b, untouched = _two_peer_adam(COMPRESSION_BY_NAME["blockwise8"]())  # exact zeros out, the stock replies back
    moved = a[~untouched].abs().mean()
    assert (a - b)[untouched].abs().mean() > moved / 10  # the random walk: zeros must be exact on the way back too

    install_wire_formats()  # what the peer does before its averagers start
    a, b, untouched = _two_peer_adam(COMPRESSION_BY_NAME["blockwise8"]())
    moved = a[~untouched].abs().mean()
    assert torch.all(a[untouched] == 0) and torch.all(b[untouched] == 0)
    assert (a - b).abs().mean() < moved / 50  # the 8-bit floor on touched parameters: ~1 % after 20 rounds


def _top_k_like(size: int, density: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    kept = torch.rand(size, generator=generator) < density
    return torch.randn(size, generator=generator).mul_(1e-3).masked_fill_(~kept, 0.0)


@pytest.mark.parametrize(("density", "at_least_smaller"), [(0.016, 8.0), (0.06, 4.0), (0.3, 2.0), (0.0, 100.0)])
def test_sparse8_sends_mostly_zero_tensors_as_their_nonzeros_and_keeps_every_zero_exact(density, at_least_smaller):
    """DiLoCo's top-k pseudo-gradients (1.6 % nonzero) and the reducers' replies (nonzero where any peer of the group
    sent a value): measured 9.9x, 5.1x and 2.3x fewer bytes than blockwise 8-bit at 1.6, 6 and 30 %."""
    import bitsandbytes.functional  # noqa: F401

    from cairn.peer.compression import install_wire_formats

    install_wire_formats()  # the registry decodes by type, as a reducer's reply is decoded
    tensor = _top_k_like(1 << 16, density)
    sparse = COMPRESSION_BY_NAME["sparse8"]().compress(tensor, CompressionInfo.from_tensor(tensor))
    dense = COMPRESSION_BY_NAME["blockwise8"]().compress(tensor, CompressionInfo.from_tensor(tensor))
    restored = deserialize_torch_tensor(sparse)
    assert dense.ByteSize() >= at_least_smaller * sparse.ByteSize(), (dense.ByteSize(), sparse.ByteSize())
    assert torch.equal(restored == 0, tensor == 0)
    if density:
        assert float((restored - tensor).norm() / tensor.norm()) < 0.03  # blockwise 8-bit's error on the values sent


def test_sparse8_refuses_a_malformed_message_in_one_line_and_never_reads_outside_it():
    """A peer's message is untrusted: a header that lies about the shape, a position past the end, a cut buffer."""
    import numpy as np
    from hivemind.proto import runtime_pb2

    from cairn.peer.compression import SparseBlockwiseQuantization

    codec = SparseBlockwiseQuantization()
    tensor = _top_k_like(1 << 12, 0.01)
    good = codec.compress(tensor, CompressionInfo.from_tensor(tensor))
    layout, total, count, index_bytes = np.frombuffer(good.buffer, dtype="<i8", count=4)
    assert layout == SparseBlockwiseQuantization.POSITIONS and total == tensor.numel()

    def tampered(buffer: bytes, size=None, dtype="float32") -> runtime_pb2.Tensor:
        message = runtime_pb2.Tensor()
        message.CopyFrom(good)
        message.buffer, message.dtype = buffer, dtype
        if size is not None:
            del message.size[:]
            message.size.extend(size)
        return message

    header = good.buffer[:32]
    past_end = np.frombuffer(good.buffer[32 : 32 + int(index_bytes)], dtype="<u4").copy()
    past_end[-1] = 1 << 20
    cases = [
        tampered(good.buffer, size=[1 << 13]),  # the header's size is not the message's shape
        tampered(good.buffer[:20]),  # no whole header
        tampered(good.buffer[: 32 + int(index_bytes) // 2]),  # cut inside the positions
        tampered(header + past_end.tobytes() + good.buffer[32 + int(index_bytes) :]),  # a position outside the tensor
        tampered(good.buffer, dtype="int64"),  # not a float dtype
        tampered(np.array([layout, total, total + 1, index_bytes], dtype="<i8").tobytes() + good.buffer[32:]),
    ]
    for message in cases:
        with pytest.raises(ValueError):
            codec.extract(message)
    assert torch.equal(codec.extract(good) == 0, tensor == 0)
