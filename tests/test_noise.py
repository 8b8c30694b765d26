"""What a volunteer takes for errors although nothing is wrong (issue 18, item 7): library notices on every start,
hivemind's abandoned-task tracebacks, a `cairn swarm` that says nothing into a log, a join address cut at 80
columns, and new ports (so a new join address and repository URL) on every rerun."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import tomllib

from rich.console import Console

from cairn.network.logs import quiet_known_noise
from cairn.peer.swarm import PORTS_FILE, StatusLine, SwarmPlan, print_services, stable_ports
from swarm_util import ROOT


def test_importing_bitsandbytes_prints_no_kernel_notice():
    """Every process printed "Failed to load CPU gemm_4bit_forward ... pip install kernels" (Cairn never uses 4-bit)."""
    code = "from cairn.network.logs import quiet_known_noise; quiet_known_noise(); import bitsandbytes.functional"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "gemm_4bit" not in result.stderr + result.stdout, result.stderr


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _exception_from(filename: str) -> BaseException:
    namespace: dict = {}
    exec(compile("def fail():\n    raise ConnectionResetError('gone')\n", filename, "exec"), namespace)
    try:
        namespace["fail"]()
    except ConnectionResetError as error:
        return error
    raise AssertionError("unreachable")


def test_abandoned_hivemind_tasks_are_not_logged_but_other_task_errors_are():
    quiet_known_noise()
    capture = _Capture()
    logger = logging.getLogger("asyncio")
    logger.addHandler(capture)
    try:
        for where in ("/venv/lib/python3.11/site-packages/hivemind/averaging/allreduce.py", "/srv/cairn/peer/node.py"):
            error = _exception_from(where)
            logger.error("Task exception was never retrieved\nfuture: <Task finished>", exc_info=(type(error), error, error.__traceback__))
    finally:
        logger.removeHandler(capture)
    assert len(capture.messages) == 1  # only the one raised outside hivemind


def test_cairn_swarm_prints_progress_when_its_output_is_not_a_terminal():
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=80)
    now = [0.0]
    with StatusLine(console, "starting peers…", every=30.0, clock=lambda: now[0]) as status:
        for second in range(0, 95, 2):
            now[0] = float(second)
            status.update(f"global step {second // 10}")
    lines = out.getvalue().splitlines()
    assert lines[0] == "starting peers…"
    assert lines[1:] == ["global step 3", "global step 6", "global step 9"]  # at most every 30 s, only when changed


def test_the_join_address_is_printed_whole_at_80_columns():
    join = "/ip4/127.0.0.1/tcp/41001/p2p/QmXdiZKXwJRbaj5nG8WTcjjkwg3149ehaskX5ms1qFKZKw"
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=80)
    print_services(console, [("coordinator", "123", join)], join, "http://127.0.0.1:41002/", "http://127.0.0.1:41003/")
    assert f"join address: {join}" in out.getvalue().splitlines()


def test_cairn_swarm_reuses_its_ports_on_a_rerun(tmp_path):
    first = SwarmPlan(workdir=tmp_path, peers=1, minutes=1)
    second = SwarmPlan(workdir=tmp_path, peers=1, minutes=1)
    assert (first.dht_port, first.http_port, first.dashboard_port) == (second.dht_port, second.http_port, second.dashboard_port)
    assert len({first.dht_port, first.http_port, first.dashboard_port}) == 3
    # a port taken meanwhile is replaced, and the replacement remembered
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", first.http_port))
        moved = stable_ports(tmp_path)
    assert moved["dht"] == first.dht_port and moved["http"] != first.http_port
    assert json.loads((tmp_path / PORTS_FILE).read_text()) == moved


def test_installing_prints_no_licence_deprecation():
    """setuptools >= 77 warns about a `license = {text = ...}` table on every install: an SPDX string is the current form."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert isinstance(project["project"]["license"], str)
    assert not [c for c in project["project"].get("classifiers", []) if c.startswith("License ::")]
    assert any(r.replace(" ", "").startswith("setuptools>=77") for r in project["build-system"]["requires"])


_THREAD_SCRIPT = """
import sys, threading
from cairn.network.logs import quiet_known_noise
quiet_known_noise()
filename, function = sys.argv[1], sys.argv[2]
namespace = {}
exec(compile(f"def {function}():\\n    raise FileNotFoundError(2, 'No such file or directory')\\n", filename, "exec"), namespace)
thread = threading.Thread(target=namespace[function])
thread.start()
thread.join()
"""


def _thread_failing_in(filename: str, function: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", _THREAD_SCRIPT, filename, function], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_a_shutdown_thread_finding_p2pd_gone_prints_no_traceback():
    """A coordinator stopped with Ctrl+C printed "Exception in thread ... FileNotFoundError" from each averager: the
    terminal's SIGINT had already stopped p2pd, so removing its handlers failed. Other thread failures still print."""
    assert _thread_failing_in("/venv/site-packages/hivemind/averaging/averager.py", "_shutdown") == ""
    assert "FileNotFoundError" in _thread_failing_in("/srv/cairn/coordinator/service.py", "_shutdown")
    assert "FileNotFoundError" in _thread_failing_in("/venv/site-packages/hivemind/averaging/averager.py", "step")


def test_a_failed_state_download_is_one_line_without_traceback(caplog):
    """A donor that left mid-download made hivemind log a 20-line traceback in the coordinator's log on every Ctrl+C."""
    import logging

    from cairn.network.logs import quiet_known_noise

    quiet_known_noise()
    averager = logging.getLogger("hivemind.averaging.averager")
    try:
        raise ConnectionError("protocols not supported")
    except ConnectionError:
        averager.error("Failed to download state from QmPeer - ConnectionError('protocols not supported')", exc_info=True)
        averager.error("something else went wrong", exc_info=True)
    first, second = caplog.records[-2:]
    assert first.getMessage().startswith("Failed to download state from") and first.exc_info is None
    assert second.exc_info is not None  # other errors keep their tracebacks


def test_a_round_without_a_group_is_one_line_without_traceback(caplog):
    """hivemind logs a round that found no group with `logger.exception`: a client-mode peer leaving mid-epoch printed
    a traceback for what its summary counts as one failed round (CI, the lifecycle test). Other errors keep theirs."""
    import logging

    from hivemind.averaging.partition import AllreduceException

    from cairn.network.logs import quiet_hivemind_logs

    quiet_hivemind_logs()  # as every role does: hivemind's records reach the application's handlers (and caplog's)
    averager = logging.getLogger("hivemind.averaging.averager")
    try:
        raise AllreduceException("Averaging step failed: could not find a group")
    except AllreduceException as error:
        averager.exception(error)
    try:
        raise ValueError("a bug")
    except ValueError as error:
        averager.exception(error)
    by_message = {record.getMessage(): record for record in caplog.records}  # the last of each (other tests log too)
    assert by_message["Averaging step failed: could not find a group"].exc_info is None
    assert by_message["a bug"].exc_info is not None
