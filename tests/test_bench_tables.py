"""The shaped benchmark's spot-check column (bench/shaped_network.py), read from a real coordinator ledger."""

from __future__ import annotations

import sys
from pathlib import Path

from swarm_util import ROOT

sys.path.insert(0, str(ROOT))
from bench.shaped_network import spot_check_outcomes  # noqa: E402
from cairn.coordinator.ledger import Ledger  # noqa: E402


def test_the_run_s_spot_checks_are_counted_from_the_coordinator_s_ledger(tmp_path: Path):
    assert spot_check_outcomes(tmp_path / "missing.sqlite") == {"passed": 0, "failed": 0, "forfeited_samples": 0}
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        ledger.record_spot_check("a" * 16, 1, 3.0, 3.0, True)
        ledger.record_spot_check("b" * 16, 1, 3.3, 3.2, False)
        ledger.record_spot_check("a" * 16, 2, 2.5, 2.5, True)
    finally:
        ledger.close()
    assert spot_check_outcomes(tmp_path / "ledger.sqlite") == {"passed": 2, "failed": 1, "forfeited_samples": 0}
