"""Background work at a lower CPU priority than training and averaging.

A peer's download and loading of its compatibility parent is a burst of CPU work that nothing waits for; it
must not slow the training loop into missing an averaging round (a peer late to matchmaking falls back to
its own gradient for that step). (The coordinator's worker is not lowered: it also keeps the averaged state
it shares with joining peers fresh.) Linux schedules threads
individually, so raising one thread's nice value lowers just that work.
"""

from __future__ import annotations

import os
import threading

BACKGROUND_NICENESS = 10


def lower_this_thread(niceness: int = BACKGROUND_NICENESS) -> None:
    """Raise the calling thread's nice value by `niceness` (Linux; a no-op where unsupported or refused)."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + niceness))
    except (AttributeError, OSError):
        pass
