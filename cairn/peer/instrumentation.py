"""Count all-reduce outcomes and averaging bytes for metrics and benchmarks.

hivemind.Optimizer reports each gradient round only through its logger ("Averaged gradients with N
peers", "Skipped averaging", "Averaging gradients failed with ..."): a log handler counts them.
Bytes: a peer's outgoing tensor parts pass through its compression object (a counting wrapper sees
them), while reducers' replies and all incoming parts go through the module-level
(de)serialise functions of hivemind.averaging.allreduce, which `install_traffic_taps` wraps. Averagers
run in forked processes, so the counters are multiprocessing Values created before the fork.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field

from hivemind.compression import CompressionBase, CompressionInfo
from hivemind.proto import runtime_pb2

from cairn.peer.compression import COMPRESSION_BY_NAME


@dataclass
class RoundCounters:
    success: int = 0
    alone: int = 0
    failure: int = 0
    timeout: int = 0
    last_outcome: str = ""
    # successful gradient rounds by the size of the group they closed with: a swarm split into groups reports every
    # round a success on every peer (docs/benchmarks.md §10, "a split swarm"), and only the sizes show it
    group_sizes: dict[int, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return {"success": self.success, "alone": self.alone, "failure": self.failure, "timeout": self.timeout}

    def sizes(self) -> dict[int, int]:
        with self.lock:
            return dict(sorted(self.group_sizes.items()))

    def total(self) -> int:
        """Rounds ended so far, whatever their outcome: a change across a call means a round ended in it."""
        return sum(self.snapshot().values())


# hivemind.Optimizer's message for a successful gradient round (cairn/network/hivemind_contract.py checks the prefix)
AVERAGED_GRADIENTS = re.compile(r"^Averaged gradients with (\d+) peers")


class RoundOutcomeHandler(logging.Handler):
    """Turns hivemind.Optimizer's status messages into counters (and optional callbacks)."""

    def __init__(self, counters: RoundCounters, on_outcome=None):
        super().__init__(level=logging.DEBUG)
        self.counters = counters
        self.on_outcome = on_outcome
        self.round_started = time.monotonic()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        outcome = None
        if message.startswith("Beginning optimizer step") or message.startswith("Pre-scheduling"):
            self.round_started = time.monotonic()
            return
        if message.startswith("Averaged gradients with"):
            outcome = "success"
        elif message.startswith("Skipped averaging"):
            outcome = "alone"
        elif message.startswith("Averaging gradients failed"):
            outcome = "timeout" if "Timeout" in message else "failure"
        elif message.startswith("Received parameters from background averaging round"):
            outcome = "success"  # a background parameter-averaging round completed
        if outcome is None:
            return
        averaged = AVERAGED_GRADIENTS.match(message)
        with self.counters.lock:
            setattr(self.counters, outcome, getattr(self.counters, outcome) + 1)
            self.counters.last_outcome = outcome
            if averaged is not None:
                size = int(averaged.group(1))
                self.counters.group_sizes[size] = self.counters.group_sizes.get(size, 0) + 1
        if self.on_outcome is not None and outcome != "alone":
            self.on_outcome(outcome, time.monotonic() - self.round_started)


def watch_rounds(counters: RoundCounters, on_outcome=None) -> RoundOutcomeHandler:
    from cairn.network.hivemind_contract import check_hivemind

    check_hivemind()  # the messages matched above are hivemind's internals: a renamed one would count zero rounds
    handler = RoundOutcomeHandler(counters, on_outcome)
    for name in ("hivemind.optim.optimizer", "hivemind.optim.state_averager"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
    return handler


class CountingCompression(CompressionBase):
    """Wraps a hivemind compression and counts the serialised payload bytes of outgoing parts."""

    def __init__(self, inner: CompressionBase, sent, received):
        self.inner = inner
        self.compression_type = getattr(inner, "compression_type", None)  # adaptive compressions choose per tensor
        self.sent, self.received = sent, received  # multiprocessing.Value('q')

    def compress(self, tensor, info: CompressionInfo, allow_inplace: bool = False) -> runtime_pb2.Tensor:
        serialized = self.inner.compress(tensor, info, allow_inplace)
        with self.sent.get_lock():
            self.sent.value += serialized.ByteSize()
        return serialized

    def extract(self, serialized_tensor: runtime_pb2.Tensor):
        with self.received.get_lock():
            self.received.value += serialized_tensor.ByteSize()
        return self.inner.extract(serialized_tensor)

    def estimate_compression_ratio(self, info: CompressionInfo) -> float:
        return self.inner.estimate_compression_ratio(info)

    def __repr__(self) -> str:
        return f"Counting({self.inner!r})"


def make_compression(name: str, sent, received) -> CountingCompression:
    return CountingCompression(COMPRESSION_BY_NAME[name](), sent, received)


def install_traffic_taps(sent, received) -> None:
    """Count the bytes of reducers' replies (sent) and of every incoming part (received)."""
    from hivemind.averaging import allreduce

    from cairn.network.hivemind_contract import check_hivemind

    check_hivemind()
    if getattr(allreduce, "_cairn_tapped", False):
        return
    serialize, deserialize = allreduce.serialize_torch_tensor, allreduce.deserialize_torch_tensor

    def counting_serialize(*args, **kwargs):
        message = serialize(*args, **kwargs)
        with sent.get_lock():
            sent.value += message.ByteSize()
        return message

    def counting_deserialize(message):
        with received.get_lock():
            received.value += message.ByteSize()
        return deserialize(message)

    allreduce.serialize_torch_tensor, allreduce.deserialize_torch_tensor = counting_serialize, counting_deserialize
    allreduce._cairn_tapped = True
