"""Which hivemind compression a peer uses for what, and the two ways the stock choices went wrong on CPU.

Gradients go as the run says (`none`, `fp16`, `uniform8`, `blockwise8`, or `sparse8`: blockwise 8-bit that leaves
out exact zeros, for DiLoCo's top-k pseudo-gradients); whole-state transfers (state
averaging, a joiner's download) send parameters in fp16 and the optimizer's statistics uncompressed. Both
fixes below were found by end-to-end runs whose peers "averaged" yet disagreed; tests/test_compression.py
keeps each failure and its fix side by side.
"""

from __future__ import annotations

import numpy as np
import torch
from hivemind.compression import (
    BlockwiseQuantization,
    CompressionBase,
    CompressionInfo,
    Float16Compression,
    NoCompression,
    RoleAdaptiveCompression,
    Uniform8BitQuantization,
)
from hivemind.proto import runtime_pb2


class ExactZeroBlockwiseQuantization(BlockwiseQuantization):
    """hivemind's blockwise 8-bit quantization (same wire format), with exact zeros kept exact.

    bitsandbytes' CPU `quantize_blockwise` rounds 0 to the code 2.1e-5 * absmax although its codebook holds
    an exact 0. Averaging sends deltas (average - own gradient), and a parameter no peer's batch touched
    (an unseen token's embedding) has delta 0: it came back as ~1e-7, and Adam, whose second moment for
    such a parameter is ~1e-14, turned that into a full learning-rate step in a random direction on every
    peer, every round. Unused parameters random-walked, and peers disagreed by ~10 % of what they had moved.
    """

    def quantize(self, tensor: torch.Tensor, allow_inplace: bool = False):
        quantized, (absmax, codebook) = super().quantize(tensor, allow_inplace)
        zero_code = int(abs(codebook).argmin())
        if codebook[zero_code] == 0:
            quantized[(tensor == 0).numpy().reshape(quantized.shape)] = zero_code
        return quantized, (absmax, codebook)


class SparseBlockwiseQuantization(CompressionBase):
    """Blockwise 8-bit for tensors that are mostly exact zeros: where the nonzeros are, then only their values.

    What it is for: DiLoCo's top-k pseudo-gradients (`SwarmConfig.outer_topk`, cairn/peer/error_feedback.py) are
    98 % zeros, and the reducers' replies (average - own part) nonzero only where some peer of the group sent a
    value. Blockwise 8-bit spends a byte on every zero. Here a part is sent in the smallest of three layouts:
    `positions` (uint32 index of each nonzero), `bitmap` (one bit per value) or `dense`, followed by the values it
    lists in hivemind's blockwise 8-bit format (`ExactZeroBlockwiseQuantization`, exact zeros kept). A dense part
    costs 32 header bytes more than blockwise 8-bit; at 1.6 % nonzeros a part is 12x smaller
    (tests/test_compression.py).

    The wire: hivemind's `CompressionType` enum is fixed in its .proto and has no sparse member, so this format
    travels under QUANTILE_8BIT, a type Cairn never sends otherwise (`install_wire_formats` registers it for
    both directions). A peer without Cairn's registry would misread it; every peer of a Cairn run runs Cairn.
    Anything a peer sends is untrusted: a malformed message is refused with a ValueError (the round then treats
    that sender as failed), never read out of bounds.
    """

    compression_type = runtime_pb2.CompressionType.QUANTILE_8BIT
    POSITIONS, BITMAP, DENSE = 0, 1, 2
    HEADER = 4 * 8  # layout, values in the tensor, values listed, index bytes: four little-endian int64
    DTYPES = ("float32", "float16", "bfloat16")

    def __init__(self) -> None:
        self.values = ExactZeroBlockwiseQuantization()

    def estimate_compression_ratio(self, info: CompressionInfo) -> float:
        return self.values.estimate_compression_ratio(info)  # parts are sized as dense blockwise 8-bit ones

    def compress(self, tensor: torch.Tensor, info: CompressionInfo, allow_inplace: bool = False) -> runtime_pb2.Tensor:
        flat = tensor.detach().reshape(-1).to(torch.float32)
        nonzero = flat != 0
        count = int(nonzero.sum())
        sizes = {self.POSITIONS: 5 * count, self.BITMAP: (flat.numel() + 7) // 8 + count, self.DENSE: flat.numel()}
        layout = min(sizes, key=sizes.__getitem__)
        if layout == self.DENSE:
            index, values = b"", flat
        elif layout == self.POSITIONS:
            positions = nonzero.nonzero().reshape(-1)
            index, values = positions.numpy().astype("<u4").tobytes(), flat[positions]
        else:
            index, values = np.packbits(nonzero.numpy()).tobytes(), flat[nonzero]
        body = self.values.compress(values, CompressionInfo.from_tensor(values)).buffer if values.numel() else b""
        header = np.array([layout, flat.numel(), values.numel(), len(index)], dtype="<i8").tobytes()
        return runtime_pb2.Tensor(
            buffer=header + index + body,
            size=tensor.shape,
            requires_grad=tensor.requires_grad,
            dtype=str(tensor.dtype).replace("torch.", ""),
            compression=self.compression_type,
        )

    def extract(self, serialized_tensor: runtime_pb2.Tensor) -> torch.Tensor:
        buffer, shape = serialized_tensor.buffer, tuple(serialized_tensor.size)
        if len(buffer) < self.HEADER or serialized_tensor.dtype not in self.DTYPES:
            raise ValueError("a sparse 8-bit tensor with no header or an unknown dtype")
        layout, total, count, index_bytes = (int(v) for v in np.frombuffer(buffer, dtype="<i8", count=4))
        expected_index = {self.POSITIONS: 4 * count, self.BITMAP: (total + 7) // 8, self.DENSE: 0}.get(layout)
        if total != int(np.prod(shape, dtype=np.int64)) or not 0 <= count <= total or index_bytes != expected_index:
            raise ValueError("a sparse 8-bit tensor whose header does not match its shape")
        if layout == self.DENSE and count != total or len(buffer) < self.HEADER + index_bytes:
            raise ValueError("a sparse 8-bit tensor whose header does not match its shape")
        index = buffer[self.HEADER : self.HEADER + index_bytes]
        values = torch.zeros(0)
        if count:
            body = runtime_pb2.Tensor(
                buffer=buffer[self.HEADER + index_bytes :], size=[count], dtype="float32", compression=self.values.compression_type
            )
            values = self.values.extract(body).reshape(-1)
            if values.numel() != count:
                raise ValueError("a sparse 8-bit tensor with fewer values than it lists")
        if layout == self.DENSE:
            flat = values
        else:
            flat = torch.zeros(total)
            if layout == self.POSITIONS:
                positions = torch.from_numpy(np.frombuffer(index, dtype="<u4").astype(np.int64))
                if count and int(positions.max()) >= total:
                    raise ValueError("a sparse 8-bit tensor with a position outside it")
            else:
                positions = torch.from_numpy(np.unpackbits(np.frombuffer(index, dtype=np.uint8), count=total).astype(bool))
                if int(positions.sum()) != count:
                    raise ValueError("a sparse 8-bit tensor whose bitmap does not match its count")
            flat[positions] = values
        return flat.reshape(shape).to(getattr(torch, serialized_tensor.dtype)).requires_grad_(serialized_tensor.requires_grad)


def install_wire_formats() -> None:
    """Make hivemind's own (de)serialiser use Cairn's formats: ExactZeroBlockwiseQuantization for BLOCKWISE_8BIT
    tensors (the same wire format) and SparseBlockwiseQuantization in the QUANTILE_8BIT slot.

    A peer's outgoing parts go through the compression it passes to the Optimizer, but a reducer's replies
    (the deltas, where the zeros are) are serialised by compression *type* through hivemind's registry.
    Call in the main process before the averagers fork.
    """
    from hivemind.compression import serialization

    from cairn.network.hivemind_contract import check_hivemind

    check_hivemind()  # the registry is hivemind's internal: refuse, in one line, a hivemind without it
    serialization._BASE_COMPRESSION_TYPES["BLOCKWISE_8BIT"] = ExactZeroBlockwiseQuantization()
    serialization._BASE_COMPRESSION_TYPES["QUANTILE_8BIT"] = SparseBlockwiseQuantization()


COMPRESSION_BY_NAME = {
    "none": NoCompression,
    "fp16": Float16Compression,
    "uniform8": Uniform8BitQuantization,
    "blockwise8": ExactZeroBlockwiseQuantization,
    "sparse8": SparseBlockwiseQuantization,
}


def make_state_compression(parameters: str, statistics: str = "none") -> CompressionBase:
    """For whole-state transfers: parameters as `parameters` names, the optimizer's statistics as `statistics`
    (uncompressed unless said otherwise), anything else uncompressed.

    Why the statistics stay fp32 by default: Adam's second moments sit far below fp16's smallest normal number
    (median 4e-9 after 16 steps of the tiny encoder); an fp16 round trip flushed half of them to zero, a joiner's
    next updates were ~25 times too large and stayed inflated while beta2 = 0.999 refilled them: in end-to-end runs
    joiners, and the peers they averaged with, blew up. DiLoCo's shared optimizer is SGD with Nesterov momentum,
    whose one statistic is a running pseudo-gradient: fp16 keeps it to 1e-3 relative, and a value it flushes (below
    6e-8) moves nothing (tests/test_compression.py), so DiLoCo runs pass `statistics="fp16"`: a whole state is then
    31 MB instead of 47 MB for the default encoder, and the coordinator downloads one every outer round.
    """
    return RoleAdaptiveCompression(
        parameter=COMPRESSION_BY_NAME[parameters](), optimizer=COMPRESSION_BY_NAME[statistics](), default=NoCompression()
    )
