"""A dishonest Cairn peer, for bench/adversarial.py only: `python bench/malicious_peer.py ATTACK peer run ...`.

It runs the ordinary `cairn` CLI with the peer's gradient sanitiser replaced by an attack, so every batch's
gradient is corrupted and shared unclipped, as a peer that does not run Cairn's code would. It is deliberately not a
CLI flag or setting of Cairn itself: nothing a user can pass turns a peer malicious.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _nan_inf(grad: torch.Tensor, step: int) -> torch.Tensor:
    return torch.full_like(grad, float("nan") if step % 2 == 0 else float("inf"))


ATTACKS: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "nan_inf": _nan_inf,  # NaN on even batches, +Inf on odd ones
    "scaled": lambda grad, step: grad * 1e6,
    "sign_flip": lambda grad, step: grad * -1e6,  # flipped and scaled: flipped alone would only halve the average
    "noise": lambda grad, step: torch.randn_like(grad) * (1e3 * float(grad.std()) + 1e-3),
}


def install(attack: str) -> None:
    """Replace the peer's sanitiser (cairn.peer.node.sanitize_gradients) with `attack` on every gradient."""
    import cairn.peer.node as node

    corrupt, steps = ATTACKS[attack], [0]

    def sanitize_gradients(parameters: Iterable[torch.nn.Parameter], max_norm: float = 0.0) -> bool:
        with torch.no_grad():
            for p in parameters:
                if p.grad is not None:
                    p.grad.copy_(corrupt(p.grad, steps[0]))
        steps[0] += 1
        return True

    node.sanitize_gradients = sanitize_gradients


# attacks whose values 8-bit blockwise quantisation would launder on the way out: bitsandbytes turns a NaN block
# into -0 (and keeps Inf), so the attacker sends them uncompressed, as any peer may (the sender picks each part's codec)
RAW_ON_THE_WIRE = {"nan_inf"}


def send_raw() -> None:
    """Send gradient parts as raw fp32 but split exactly as the group's blockwise 8-bit peers split theirs.

    (`--compression none` would not do: parts are sized by the compression's ratio, so the reducers would refuse
    the differently shaped parts and ban the sender before any NaN was looked at.)
    """
    from hivemind.compression import NoCompression

    from cairn.peer.compression import COMPRESSION_BY_NAME

    blockwise = COMPRESSION_BY_NAME["blockwise8"]

    class RawSplitLikeBlockwise(NoCompression):
        def estimate_compression_ratio(self, info) -> float:
            return blockwise().estimate_compression_ratio(info)

    COMPRESSION_BY_NAME["blockwise8"] = RawSplitLikeBlockwise


if __name__ == "__main__":
    attack = sys.argv[1]
    install(attack)
    if attack in RAW_ON_THE_WIRE:
        send_raw()
    sys.argv = ["cairn", *sys.argv[2:]]
    from cairn.cli import main

    main()
