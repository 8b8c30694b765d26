"""What Cairn relies on inside hivemind, checked before it is relied on (issue 16).

Five modules reach past hivemind's public API: `instrumentation.py` counts averaging rounds by matching the
Optimizer's log messages and wraps the all-reduce's module-level (de)serialisers to count bytes,
`compression.py` replaces an entry of the serialiser registry, `diloco.py` (overlapped outer rounds) overrides
the Optimizer's state-averager constructor and three GradientAverager methods (one of them the averager's
`_run_allreduce_inplace_`), and `aggregation.py` (issue 12) replaces the
all-reduce's part reducer, part container and runner with subclasses that re-implement `accumulate_part`;
`deadlines.py` wraps the averager's `_aggregate_with_group` and sets the matchmaking's `target_group_size` in
`_step`. A hivemind upgrade that renamed any of these
would not fail: the counts would silently read zero and the exact-zero fix would silently stop applying. So every
patch first calls `check_hivemind()`, which refuses, in one line, a hivemind whose internals no longer have what
the patches touch. `HIVEMIND_TESTED` is the version the patches were last verified against (pinned in
pyproject.toml); another version is accepted when everything below is still there.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from cairn.protocol.errors import CairnError

HIVEMIND_TESTED = "1.1.12"

# hivemind.Optimizer's status messages that instrumentation.RoundOutcomeHandler turns into round outcomes
ROUND_MESSAGES = (
    "Beginning optimizer step",
    "Averaged gradients with",
    "Skipped averaging",
    "Averaging gradients failed with",
    "Pre-scheduling",
)


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
    state_source = inspect.getsource(TrainingStateAverager)
    if "self.pending_updates" not in state_source:
        missing.append("hivemind TrainingStateAverager.pending_updates")
    # cairn/peer/state_sync.py reads a state averaging round's group size from this message
    if 'f"Averaged parameters with {len(gathered)} peers"' not in state_source:
        missing.append("the TrainingStateAverager log message 'Averaged parameters with N peers'")
    from hivemind.p2p.servicer import ServicerBase

    if "__name__" not in inspect.getsource(getattr(ServicerBase, "_get_handle_name", lambda: None)):
        missing.append("hivemind ServicerBase._get_handle_name naming handlers after the class")
    return missing + missing_trusted_state_internals(source) + missing_allreduce_internals()


def missing_trusted_state_internals(optimizer_source: str) -> list[str]:
    """What cairn/network/trusted_state.py (issue 12) replaces: the tracker's constructor and parser, the donor loop."""
    import hivemind.optim.optimizer as optimizer_module
    from hivemind.averaging.averager import DecentralizedAverager
    from hivemind.optim.progress_tracker import ProgressTracker
    from hivemind.optim.state_averager import TrainingStateAverager

    missing = []
    if not callable(getattr(optimizer_module.Optimizer, "_make_progress_tracker", None)) or "ProgressTracker(" not in optimizer_source:
        missing.append("hivemind.Optimizer._make_progress_tracker building a ProgressTracker")
    parse = getattr(ProgressTracker, "_parse_swarm_progress_data", None)
    if not callable(parse) or tuple(inspect.signature(parse).parameters) != ("self", "metadata"):
        missing.append("hivemind ProgressTracker._parse_swarm_progress_data(self, metadata)")
    download = getattr(DecentralizedAverager, "_load_state_from_peers", None)
    if not callable(download) or tuple(inspect.signature(download).parameters) != ("self", "future", "timeout"):
        missing.append("hivemind DecentralizedAverager._load_state_from_peers(self, future, timeout)")
    else:
        source = inspect.getsource(download)
        missing += [
            f"_load_state_from_peers using {name!r}" for name in ("all_averagers", "rpc_download_state", "set_result") if name not in source
        ]
    if "super().load_state_from_peers(" not in inspect.getsource(TrainingStateAverager.load_state_from_peers):
        missing.append("hivemind TrainingStateAverager.load_state_from_peers calling the averager's download")
    if "self.main_parameters" not in inspect.getsource(TrainingStateAverager):
        missing.append("hivemind TrainingStateAverager.main_parameters")
    public = getattr(DecentralizedAverager, "load_state_from_peers", None)
    if not callable(public) or tuple(inspect.signature(public).parameters) != ("self", "wait", "timeout"):
        missing.append("hivemind DecentralizedAverager.load_state_from_peers(self, wait, timeout)")
    if "getattr(self, method)" not in inspect.getsource(DecentralizedAverager._run_internal):
        missing.append("hivemind DecentralizedAverager._run_internal calling pipe messages by method name")
    return missing


# what cairn/peer/aggregation.py's subclasses rely on: (class, method, its parameters, names its source must use)
ALLREDUCE_CONTRACT = (
    (
        "TensorPartReducer",
        "__init__",
        ("self", "part_shapes", "num_senders"),
        (
            "current_part_index",
            "current_part_future",
            "current_part_accumulated_from",
            "finished",
            "num_parts_received",
            "sender_failed_after",
            "num_current_senders",
            "reset_accumulators",
        ),
    ),
    (
        "TensorPartReducer",
        "accumulate_part",
        ("self", "sender_index", "part_index", "tensor_part", "weight"),
        ("current_part_future", "sender_failed_after", "check_current_part_finished"),
    ),
    ("TensorPartReducer", "check_current_part_finished", ("self",), ("current_part_accumulated_from", "reset_accumulators")),
    ("TensorPartReducer", "on_sender_failed", ("self", "sender_index"), ("check_current_part_finished",)),
    ("TensorPartContainer", "__init__", None, ("_input_parts_by_peer", "local_tensors", "total_size", "return_deltas", "failed_size")),
    ("TensorPartContainer", "register_processed_part", ("self", "peer_index", "part_index", "part"), ()),
    ("AllReduceRunner", "__init__", None, ("TensorPartReducer(", "TensorPartContainer(", "sender_peer_ids", "ordered_peer_ids")),
)


def missing_allreduce_internals() -> list[str]:
    """What aggregation.py's subclasses need from hivemind's all-reduce classes (read from the unpatched modules)."""
    from hivemind.averaging import allreduce, averager, partition

    missing = []
    for class_name, method, parameters, names in ALLREDUCE_CONTRACT:
        owner = partition if class_name != "AllReduceRunner" else allreduce
        function = getattr(getattr(owner, class_name, None), method, None)
        if not callable(function):
            missing.append(f"hivemind.averaging.{owner.__name__.rsplit('.', 1)[-1]}.{class_name}.{method}")
            continue
        if parameters is not None and tuple(inspect.signature(function).parameters) != parameters:
            missing.append(f"{class_name}.{method}{parameters}")
        source = inspect.getsource(function)
        missing += [f"{class_name}.{method} using {name!r}" for name in names if name not in source]
    if not isinstance(getattr(averager, "AllReduceRunner", None), type) or "AllReduceRunner(" not in inspect.getsource(averager):
        missing.append("hivemind.averaging.averager building its AllReduceRunner")
    # diloco.PeerGradientAverager installs the container's floor in _run_allreduce_inplace_, which builds the runner
    run = getattr(averager.DecentralizedAverager, "_run_allreduce_inplace_", None)
    if not callable(run) or "AllReduceRunner(" not in inspect.getsource(run):
        missing.append("hivemind DecentralizedAverager._run_allreduce_inplace_ building the AllReduceRunner")
    # deadlines.AdaptiveDeadlines bounds _aggregate_with_group, which _step runs under the (ceiling) allreduce_timeout
    aggregate = getattr(averager.DecentralizedAverager, "_aggregate_with_group", None)
    if not callable(aggregate) or "_aggregate_with_group(" not in inspect.getsource(averager.DecentralizedAverager._step):
        missing.append("hivemind DecentralizedAverager._step running _aggregate_with_group")
    # the bans (aggregation.BanningMatchmaking): the averager builds its Matchmaking by that module-level name, which
    # decides whom to accept in _check_reasons_to_reject(request, context) and asks a leader in _request_join_group(leader)
    from hivemind.averaging import matchmaking

    if not isinstance(getattr(averager, "Matchmaking", None), type) or "Matchmaking(" not in inspect.getsource(averager):
        missing.append("hivemind.averaging.averager building its Matchmaking")
    for method, parameters in (("_check_reasons_to_reject", ("self", "request", "context")), ("_request_join_group", ("self", "leader"))):
        function = getattr(getattr(matchmaking, "Matchmaking", None), method, None)
        if not callable(function) or tuple(inspect.signature(function).parameters) != parameters:
            missing.append(f"hivemind.averaging.matchmaking.Matchmaking.{method}{parameters}")
    # deadlines.GroupQuorum sets the matchmaking's target_group_size at the start of each _step(*, step,
    # future_for_init), and the leader assembles its group the moment it reaches that size (rpc_join_group)
    step = getattr(averager.DecentralizedAverager, "_step", None)
    if not callable(step) or tuple(inspect.signature(step).parameters) != ("self", "step", "future_for_init"):
        missing.append("hivemind DecentralizedAverager._step(self, *, step, future_for_init)")
    join = getattr(getattr(matchmaking, "Matchmaking", None), "rpc_join_group", None)
    if not callable(join) or "self.target_group_size" not in inspect.getsource(join):
        missing.append("hivemind Matchmaking.rpc_join_group starting a group at target_group_size")
    return missing


@functools.lru_cache(maxsize=1)
def check_hivemind() -> str:
    """Raise CairnError (one line) when the installed hivemind lacks what Cairn's patches touch; its version otherwise."""
    import hivemind

    missing = missing_internals()
    if missing:
        raise CairnError(
            f"hivemind {hivemind.__version__} lacks what Cairn patches ({'; '.join(missing)}); Cairn was "
            f"checked against hivemind {HIVEMIND_TESTED}: pip install hivemind=={HIVEMIND_TESTED}"
        )
    return hivemind.__version__


def hivemind_wire_name(base: type) -> Any:
    """A `_get_handle_name` that registers and calls RPC handlers under `base`'s names, not the subclass's.

    hivemind names every RPC handler after the servicer's class (`ServicerBase._get_handle_name`: f"{cls.__name__}.
    {method}"), so a subclass speaks another protocol: the coordinator's plain TrainingStateAverager could not
    download the state of a peer running `OuterStateAverager` ("failed to negotiate protocol"), and an overlapped
    DiLoCo run never had its state loaded, spot-checked or released."""

    def _get_handle_name(cls: type, namespace: str | None, method_name: str) -> str:
        return base._get_handle_name(namespace, method_name)  # type: ignore[attr-defined]

    return classmethod(_get_handle_name)
