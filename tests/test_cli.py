"""The command line's own promises: help is instant (no torch, no hivemind), and every group is reachable."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("command", [[], ["peer"], ["coordinator"], ["release"], ["train", "--help"], ["swarm", "--help"]])
def test_help_does_not_import_torch_or_hivemind(command):
    """A volunteer reading `cairn --help` should not wait for torch (seconds, hundreds of MB) to load."""
    probe = (
        "import sys, runpy\n"
        f"sys.argv = ['cairn', *{command!r}, '--help']\n"
        "try:\n    runpy.run_module('cairn.cli', run_name='__main__')\n"
        "except SystemExit as done:\n    assert done.code in (0, None), done.code\n"
        "heavy = sorted(m for m in ('torch', 'hivemind', 'transformers', 'sklearn') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Usage:" in result.stdout
    assert "HEAVY []" in result.stdout, result.stdout[-500:]


def test_a_peer_that_left_exits_zero_with_its_output_flushed_whatever_threads_are_left():
    """`cairn peer run` ends with `leave_without_finalisation`: exit 0 and every line written, without waiting for (or
    finalising the interpreter under) daemon threads such as hivemind's averagers leave behind."""
    script = (
        "import logging, sys, threading, time\n"
        "from cairn.peer.cli import leave_without_finalisation\n"
        "threading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n"
        "logging.basicConfig(stream=sys.stderr)\n"
        "logging.getLogger('cairn').warning('logged')\n"
        "sys.stdout.write('ann: left after 3 samples in 1 steps')\n"
        "leave_without_finalisation()\n"
        "print('never')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ann: left after 3 samples in 1 steps" and "logged" in done.stderr, (done.stdout, done.stderr)
