"""Which hivemind compression a peer uses for what, and the two ways the stock choices went wrong on CPU.

Gradients go as the run says (`none`, `fp16`, `uniform8`, `blockwise8`); whole-state transfers (state
averaging, a joiner's download) send parameters in fp16 and the optimizer's statistics uncompressed. Both
fixes below were found by end-to-end runs whose peers "averaged" yet disagreed; tests/test_compression.py
keeps each failure and its fix side by side.
"""

from __future__ import annotations

import torch
from hivemind.compression import (
    BlockwiseQuantization,
    CompressionBase,
    Float16Compression,
    NoCompression,
    RoleAdaptiveCompression,
    Uniform8BitQuantization,
)


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


def install_exact_zero_blockwise() -> None:
    """Make hivemind's own (de)serialiser use ExactZeroBlockwiseQuantization for BLOCKWISE_8BIT tensors.

    A peer's outgoing parts go through the compression it passes to the Optimizer, but a reducer's replies
    (the deltas, where the zeros are) are serialised by compression *type* through hivemind's registry.
    Call in the main process before the averagers fork; the wire format is unchanged.
    """
    from hivemind.compression import serialization

    from cairn.network.hivemind_contract import check_hivemind

    check_hivemind()  # the registry is hivemind's internal: refuse, in one line, a hivemind without it
    serialization._BASE_COMPRESSION_TYPES["BLOCKWISE_8BIT"] = ExactZeroBlockwiseQuantization()


COMPRESSION_BY_NAME = {
    "none": NoCompression,
    "fp16": Float16Compression,
    "uniform8": Uniform8BitQuantization,
    "blockwise8": ExactZeroBlockwiseQuantization,
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
