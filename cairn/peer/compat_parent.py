"""Which release a peer stays compatible with, when the run's objective has a compat weight.

The compatibility term (cairn.training.objective.compat_loss) keeps the encoder's relational coordinates close
to those of the run's latest signed release, so task models trained on it keep working on the next one
(bench/compat_loss.py). Every peer follows the coordinator's latest release: it asks for the version now
and then, and pulls and verifies (TUF) a new one before switching to it. Until the first release exists
there is nothing to stay compatible with and the term is off.

The asking and pulling run in a background thread, so a slow or absent coordinator (an RPC waits up to
10 s) never stalls training; the training loop only adopts a parent that is fully loaded. A failed check
or pull keeps the current parent: it is logged, never fatal to training.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

import hivemind
import torch

from cairn.protocol.embedder import load_bundle
from cairn.training.task import ParentRelease, TrainingTask

logger = logging.getLogger("cairn.peer")
CHECK_EVERY_S = 30.0
PARENTS_DIR = "parent"


class ParentTracker:
    def __init__(
        self,
        dht: hivemind.DHT,
        coordinator: str,
        workdir: Path,
        device: torch.device,
        task: TrainingTask,
        check_every_s: float = CHECK_EVERY_S,
    ):
        self.dht, self.coordinator, self.workdir, self.task = dht, coordinator, Path(workdir), task
        self.device = torch.device(device)
        self.check_every_s = check_every_s
        self.version: str | None = None
        self.last_check = float("-inf")
        self._worker: threading.Thread | None = None
        self._loaded: tuple[str, ParentRelease] | None = None  # handed from the worker to the training loop

    def maybe_refresh(self, wait: bool = False) -> bool:
        """Adopt a newly loaded parent (True if one was adopted); start a check if one is due.

        Called from the training loop between steps. `wait` runs a due check to the end first (at start-up,
        so a peer joining a run with releases trains against the latest one from its first step).
        """
        adopted = self._adopt()
        now = time.monotonic()
        if self._worker is None and now - self.last_check >= self.check_every_s:
            self.last_check = now
            self._worker = threading.Thread(target=self._check, name="cairn-compat-parent", daemon=True)
            self._worker.start()
        if wait and self._worker is not None:
            self._worker.join()
        return self._adopt() or adopted

    def _adopt(self) -> bool:
        if self._worker is not None and not self._worker.is_alive():
            self._worker = None
        if self._loaded is None:
            return False
        (version, parent), self._loaded = self._loaded, None
        self.task.set_parent(parent)
        previous, self.version = self.version, version
        if previous is not None:
            shutil.rmtree(self.workdir / PARENTS_DIR / previous, ignore_errors=True)
        logger.info("staying compatible with release %s from now on", version)
        return True

    def _check(self) -> None:
        """In the worker thread: ask for the latest version; pull, verify and load it if it is new."""
        from cairn.peer.run_setup import latest_release, pull_release
        from cairn.coordinator.priority import lower_this_thread

        lower_this_thread()
        try:
            version, url = latest_release(self.dht, self.coordinator)
            if not version or version == self.version:
                return
            destination = self.workdir / PARENTS_DIR / version
            shutil.rmtree(destination, ignore_errors=True)  # a pull interrupted earlier
            pull_release(url, version, destination, self.workdir)
            self._loaded = (version, ParentRelease(load_bundle(destination, self.device.type)))
        except Exception as error:  # the coordinator restarting, a network hiccup: keep the current parent
            logger.warning("could not update the compatibility parent release: %r", error)
