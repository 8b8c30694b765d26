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
