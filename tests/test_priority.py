"""cairn.coordinator.priority lowers only the calling thread's CPU priority (Linux schedules threads individually)."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from cairn.coordinator.priority import lower_this_thread, run_at_low_priority


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_only_the_calling_thread_is_lowered():
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen: list[int] = []

    def background():
        lower_this_thread(5)
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    worker = threading.Thread(target=background)
    worker.start()
    worker.join()
    assert seen == [min(19, before + 5)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_low_priority_work_runs_lowered_and_hands_back_its_result_or_error():
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert run_at_low_priority(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), 5) == min(19, before + 5)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before  # the caller keeps its priority

    def failing():
        raise ValueError("disk full")

    with pytest.raises(ValueError, match="disk full"):
        run_at_low_priority(failing)
