"""Background work at a lower CPU priority than training and averaging.

A peer's download and loading of its compatibility parent, and a coordinator's evaluation of a release, are
bursts of CPU work that no training step waits for; they must not slow peers into missing an averaging round
(a peer late to matchmaking falls back to its own gradient for that step, and one that falls behind has to
download the state). Linux schedules threads individually, so raising one thread's nice value lowers just
that work.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Callable, TypeVar

T = TypeVar("T")

BACKGROUND_NICENESS = 10


def lower_this_thread(niceness: int = BACKGROUND_NICENESS) -> None:
    """Raise the calling thread's nice value by `niceness` (Linux; a no-op where unsupported or refused)."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + niceness))
    except (AttributeError, OSError):
        pass


def run_at_low_priority(work: Callable[[], T], niceness: int = BACKGROUND_NICENESS) -> T:
    """Run `work` in a fresh, lowered thread and wait for it: its result, or its exception re-raised here.

    A fresh thread rather than lowering the caller: the caller's priority cannot be raised back without
    privileges, and the intra-op worker threads torch starts for `work` inherit the thread that starts them.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="low-priority", initializer=partial(lower_this_thread, niceness)) as pool:
        return pool.submit(work).result()
