"""Optional live view of the swarm: contribution records read straight from the DHT (`--dht-join`).

The ledger lags the swarm by one coordinator poll; with a DHT connection the swarm page shows the
peers' own latest records too. The node runs in client mode (it dials out, stores nothing for
others) with the run's validators, so it only ever sees records that pass the schema and carry a
valid owner signature. Its RSA key is throwaway: the dashboard never writes to the DHT.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # cairn.protocol.dht_keys imports hivemind (and torch): only a dashboard with --dht-join pays for it
    from cairn.protocol.dht_keys import ContributionRecord

logger = logging.getLogger("cairn.dashboard")


class LiveRecords:
    """Polls `{run_id}_contributions` every `interval` seconds on a background thread."""

    def __init__(self, run_id: str, initial_peers: Sequence[str], interval: float = 5.0):
        from cairn.protocol.dht_keys import RunKeys

        self.keys = RunKeys(run_id)
        self.run_id = run_id
        self.initial_peers = list(initial_peers)
        self.interval = interval
        self._records: dict[str, ContributionRecord] = {}
        self._error: str | None = "connecting to the DHT"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._dht: Any = None

    def snapshot(self) -> tuple[dict[str, ContributionRecord], str | None]:
        with self._lock:
            return dict(self._records), self._error

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cairn-dashboard-dht", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._dht is not None:
            self._dht.shutdown()
            self._dht = None

    def _run(self) -> None:
        try:
            import hivemind
            from hivemind.utils.crypto import RSAPrivateKey

            from cairn.protocol.dht_keys import make_validators

            self._dht = hivemind.DHT(
                initial_peers=self.initial_peers,
                client_mode=True,
                start=True,
                record_validators=make_validators(self.run_id, RSAPrivateKey()),
            )
        except Exception as error:  # noqa: BLE001 - the dashboard keeps serving the ledger's view
            logger.warning("dashboard: cannot join the DHT: %s", error)
            with self._lock:
                self._error = f"cannot join the DHT ({str(error)[:200]})"
            return
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self.interval)

    def poll_once(self) -> None:
        from cairn.protocol.dht_keys import decode_contributions

        try:
            found = self._dht.get(self.keys.contributions, latest=True)
            records = decode_contributions(found.value if found is not None else None)
            error = None
        except Exception as error_:  # noqa: BLE001
            records, error = None, f"reading records failed ({str(error_)[:200]})"
        with self._lock:
            if records is not None:
                self._records = records
            self._error = error
