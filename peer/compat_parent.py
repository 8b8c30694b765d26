"""Which release a peer stays compatible with, when the run's objective has a compat weight.

The compatibility term (protocol.objective.compat_loss) keeps the encoder's relational coordinates close
to those of the run's latest signed release, so task models trained on it keep working on the next one
(bench/compat_loss.py). Every peer follows the coordinator's latest release: it asks for the version now
and then, and pulls and verifies (TUF) a new one before switching to it. Until the first release exists
there is nothing to stay compatible with and the term is off. A failed check or pull keeps the current
parent: it is logged, never fatal to training.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import hivemind
import torch

from protocol.embedder import load_bundle
from protocol.training import ParentRelease, TrainingTask

logger = logging.getLogger("cairn.peer")
CHECK_EVERY_S = 30.0
PARENTS_DIR = "parent"


class ParentTracker:
    def __init__(self, dht: hivemind.DHT, coordinator: str, workdir: Path, device: torch.device, task: TrainingTask,
                 check_every_s: float = CHECK_EVERY_S):
        self.dht, self.coordinator, self.workdir, self.device, self.task = dht, coordinator, Path(workdir), device, task
        self.check_every_s = check_every_s
        self.version: str | None = None
        self.last_check = float("-inf")

    def maybe_refresh(self) -> bool:
        """At most every `check_every_s`: switch to the coordinator's latest release if it is new. True if switched."""
        from peer.run_setup import latest_release, pull_release

        now = time.monotonic()
        if now - self.last_check < self.check_every_s:
            return False
        self.last_check = now
        try:
            version, url = latest_release(self.dht, self.coordinator)
            if not version or version == self.version:
                return False
            destination = pull_release(url, version, self.workdir / PARENTS_DIR / version, self.workdir)
            self.task.set_parent(ParentRelease(load_bundle(destination, self.device)))
        except Exception as error:  # the coordinator restarting, a network hiccup: keep the current parent
            logger.warning("could not update the compatibility parent release: %r", error)
            return False
        previous, self.version = self.version, version
        if previous is not None:
            shutil.rmtree(self.workdir / PARENTS_DIR / previous, ignore_errors=True)
        logger.info("staying compatible with release %s from now on", version)
        return True
