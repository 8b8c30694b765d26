"""Move an index to a newer release: re-embed its texts in resumable batches, then switch generations atomically.

While an upgrade runs, the index keeps answering with its current generation (queries may already be embedded by
the new release: its landmark set extends the index's, so the old vectors stay comparable). Progress is one file
per batch in DIR/upgrade/ (`chunk-000123.npy`, each written atomically), so kill -9 loses at most the batch in
flight and the next `upgrade` with the same release continues where it stopped; `max_batches` spreads the work
over several runs. When every batch exists, the new generation is written beside the old one and index.json is
replaced in one rename: readers see the old index or the new one, never a mix. The old generation is removed last.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import shutil
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from cairn.index.build import history_entry, release_record, write_generation
from cairn.index.embedding import as_release, check_release, embed_documents
from cairn.index.files import atomic_path, load_array, save_array
from cairn.index.meta import read_meta
from cairn.index.store import STORE_FILE, TextStore
from cairn.protocol.errors import CairnError
from cairn.tasks.api import Release

WORK_DIR = "upgrade"
STATE_FILE = "state.json"
LOCK_FILE = "upgrade.lock"


def upgrade_index(
    directory: Path | str,
    release: Release | Path | str,
    device: str = "auto",
    max_batches: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Re-embed the index's texts with `release`; returns {"status": "done" | "partial" | "current", "batches_done", "batches"}."""
    directory = Path(directory)
    meta = read_meta(directory)
    release = as_release(release, device)
    check_release(meta, release)
    with _exclusive(directory):
        meta = read_meta(directory)  # re-read under the lock: another upgrade may have finished meanwhile
        _remove_stale_generations(directory, meta.generation)
        work = directory / WORK_DIR
        if release.info.get("encoder_sha256") == meta.release.get("encoder_sha256") and release.landmarks.digest == meta.landmarks_digest:
            shutil.rmtree(work, ignore_errors=True)  # left by a run killed after its switch
            return {"status": "current", "release": release.info.get("version"), "batches_done": 0, "batches": 0}
        batch = meta.config.batch_size
        state = {
            "encoder_sha256": release.info.get("encoder_sha256"),
            "landmarks_digest": release.landmarks.digest,
            "release": release.info.get("version"),
            "from_generation": meta.generation,
            "count": meta.count,
            "batch_size": batch,
        }
        if _read_state(work) != state:  # another target (or none yet): start over
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            with atomic_path(work / STATE_FILE) as temporary:
                temporary.write_text(json.dumps(state, sort_keys=True))
        batches = math.ceil(meta.count / batch)
        store = TextStore(directory / STORE_FILE)
        embedded = 0
        try:
            for number in range(batches):
                chunk = work / f"chunk-{number:06d}.npy"
                if chunk.exists():
                    continue
                if max_batches is not None and embedded >= max_batches:
                    done = sum(1 for n in range(batches) if (work / f"chunk-{n:06d}.npy").exists())
                    return {"status": "partial", "release": state["release"], "batches_done": done, "batches": batches}
                save_array(chunk, embed_documents(release, store.texts(number * batch, (number + 1) * batch), batch))
                embedded += 1
                if progress is not None:
                    progress(number + 1, batches)
        finally:
            store.close()
        vectors = np.concatenate([load_array(work / f"chunk-{n:06d}.npy") for n in range(batches)])
        if vectors.shape != (meta.count, release.landmarks.size):
            raise CairnError(
                f"{work}: re-embedded vectors have shape {vectors.shape}, expected ({meta.count}, {release.landmarks.size}); "
                f"remove {work} and run the upgrade again"
            )
        old_generation = meta.generation
        new = replace(
            meta,
            generation=f"gen-{int(old_generation[4:]) + 1}",
            dims=release.landmarks.size,
            coarse_dims=min(meta.config.coarse_dims, release.landmarks.size),
            release=release_record(release),
            landmarks_version=release.landmarks.version,
            landmarks_digest=release.landmarks.digest,
            anchors=tuple(release.landmarks.anchors),
            history=meta.history + [history_entry(release, "upgrade")],
        )
        shutil.rmtree(directory / new.generation, ignore_errors=True)  # half-written by an interrupted run
        new.files = {STORE_FILE: meta.files[STORE_FILE], **write_generation(directory, new, vectors)}
        new.save(directory)  # the switch: one atomic rename
        shutil.rmtree(directory / old_generation, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        return {"status": "done", "release": state["release"], "batches_done": batches, "batches": batches}


def pending_upgrade(directory: Path, generation: str) -> dict[str, Any] | None:
    """An interrupted or partial upgrade of `generation` (the current one): its target and progress, or None."""
    work = Path(directory) / WORK_DIR
    state = _read_state(work)
    if state is None or state.get("from_generation") != generation:
        return None
    batches = math.ceil(state["count"] / state["batch_size"])
    done = sum(1 for n in range(batches) if (work / f"chunk-{n:06d}.npy").exists())
    return {"release": state.get("release"), "batches_done": done, "batches": batches}


def _read_state(work: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((work / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("count"), int) and isinstance(state.get("batch_size"), int) else None


def _remove_stale_generations(directory: Path, current: str) -> None:
    """Generations other than the current one are leftovers of an interrupted switch or clean-up."""
    for path in directory.glob("gen-*"):
        if path.is_dir() and path.name != current:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    """One upgrade at a time per index (an flock: released by the kernel if the holder is killed)."""
    with open(directory / LOCK_FILE, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CairnError(f"{directory}: another upgrade of this index is running") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
