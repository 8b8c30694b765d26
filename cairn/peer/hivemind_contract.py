"""What Cairn relies on inside hivemind, checked before it is relied on (issue 16).

Three modules reach past hivemind's public API: `instrumentation.py` counts averaging rounds by matching the
Optimizer's log messages and wraps the all-reduce's module-level (de)serialisers to count bytes,
`compression.py` replaces an entry of the serialiser registry, and `diloco.py` (overlapped outer rounds) overrides
the Optimizer's state-averager constructor and two GradientAverager methods. A hivemind upgrade that renamed any of these
would not fail: the counts would silently read zero and the exact-zero fix would silently stop applying. So every
patch first calls `check_hivemind()`, which refuses, in one line, a hivemind whose internals no longer have what
the patches touch. `HIVEMIND_TESTED` is the version the patches were last verified against (pinned in
pyproject.toml); another version is accepted when everything below is still there.
"""

from __future__ import annotations

import functools
import inspect

from cairn.protocol.errors import CairnError

HIVEMIND_TESTED = "1.1.12"

# hivemind.Optimizer's status messages that instrumentation.RoundOutcomeHandler turns into round outcomes
ROUND_MESSAGES = ("Beginning optimizer step", "Averaged gradients with", "Skipped averaging", "Averaging gradients failed with",
                  "Pre-scheduling")


def missing_internals() -> list[str]:
    """The hivemind internals Cairn patches or reads that this installed hivemind lacks (empty: all present)."""
    import hivemind.optim.optimizer as optimizer_module
    from hivemind.averaging import allreduce
    from hivemind.compression import serialization

    missing = []
    for name in ("serialize_torch_tensor", "deserialize_torch_tensor"):
        if not callable(getattr(allreduce, name, None)):
            missing.append(f"hivemind.averaging.allreduce.{name}")
    registry = getattr(serialization, "_BASE_COMPRESSION_TYPES", None)
    if not isinstance(registry, dict) or "BLOCKWISE_8BIT" not in registry:
        missing.append("hivemind.compression.serialization._BASE_COMPRESSION_TYPES['BLOCKWISE_8BIT']")
    source = inspect.getsource(optimizer_module)
    missing += [f"the Optimizer log message {message!r}" for message in ROUND_MESSAGES if message not in source]
    # overlapped DiLoCo (cairn/peer/diloco.py) overrides these and reads the state averager's in-flight steps
    from hivemind.optim.grad_averager import GradientAverager
    from hivemind.optim.state_averager import TrainingStateAverager

    if not callable(getattr(optimizer_module.Optimizer, "_make_state_averager", None)) or "TrainingStateAverager(" not in source:
        missing.append("hivemind.Optimizer._make_state_averager building a TrainingStateAverager")
    for name in ("load_accumulators_into_averager_", "notify_used_averaged_gradients"):
        if not callable(getattr(GradientAverager, name, None)):
            missing.append(f"hivemind GradientAverager.{name}")
    if "self.pending_updates" not in inspect.getsource(TrainingStateAverager):
        missing.append("hivemind TrainingStateAverager.pending_updates")
    return missing


@functools.lru_cache(maxsize=1)
def check_hivemind() -> str:
    """Raise CairnError (one line) when the installed hivemind lacks what Cairn's patches touch; its version otherwise."""
    import hivemind

    missing = missing_internals()
    if missing:
        raise CairnError(f"hivemind {hivemind.__version__} lacks what Cairn patches ({'; '.join(missing)}); Cairn was "
                         f"checked against hivemind {HIVEMIND_TESTED}: pip install hivemind=={HIVEMIND_TESTED}")
    return hivemind.__version__
