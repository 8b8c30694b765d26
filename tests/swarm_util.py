"""Start and stop real Cairn processes (coordinator, peers) on loopback for end-to-end tests.

Every process is started in its own session and killed by process group at the end, so nothing a
test started (hivemind's daemons, p2pd) outlives it, and nothing it did not start is touched.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cairn.peer.swarm import cairn, free_port
from cairn.protocol.workdir import Workdir

ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate, timeout: float, interval: float = 1.0, what: str = "condition", details=None):
    """Poll `predicate` until it is truthy (its value is returned) or fail after `timeout` s, with `details()` appended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}" + (f"\n{details()}" if details else ""))


def write_corpus(path: Path, pairs: int = 6000) -> str:
    """A WordNet-derived JSONL corpus small enough for fast tokenizer training in tests."""
    from cairn.corpora.wordnet import load_wordnet

    corpus = load_wordnet()
    with open(path, "w", encoding="utf-8") as handle:
        for pair in corpus.train[:pairs]:
            handle.write(json.dumps({"a": pair.a, "b": pair.b}) + "\n")
    return f"jsonl:{path}"


@dataclass
class Process:
    name: str
    args: list[str]
    log: Path
    popen: subprocess.Popen | None = None

    def start(self) -> "Process":
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        with open(self.log, "ab") as handle:
            self.popen = subprocess.Popen(
                self.args, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT, env=env
            )
        return self

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def terminate(self, timeout: float = 60.0) -> int | None:
        """SIGTERM the main process (a clean leave), wait; returns its exit code (None if it hung)."""
        if not self.alive():
            return self.popen.returncode if self.popen else None
        self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill_group(self) -> None:
        if self.popen is None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


@dataclass
class Swarm:
    """One coordinator workdir plus the processes a test started against it."""

    root: Path
    corpus: str
    dht_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    processes: list[Process] = field(default_factory=list)

    @property
    def coordinator_dir(self) -> Path:
        return self.root / "coordinator"

    def init(self, *extra: str) -> None:
        result = subprocess.run(
            cairn(
                "coordinator",
                "init",
                "--workdir",
                str(self.coordinator_dir),
                "--run-id",
                "test-run",
                "--corpus",
                self.corpus,
                "--shards",
                "4",
                "--lease-seconds",
                "8",
                "--averaging-timeout",
                "10",
                *extra,
            ),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr

    def start_coordinator(self, *extra: str) -> Process:
        workdir = Workdir(self.coordinator_dir)
        started = time.time()
        process = Process(
            "coordinator",
            cairn(
                "coordinator",
                "run",
                "--workdir",
                str(self.coordinator_dir),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.dht_port),
                "--http-host",
                "127.0.0.1",
                "--http-port",
                str(self.http_port),
                "--spot-check-seconds",
                "5",
                *extra,
            ),
            self.root / "coordinator.log",
        ).start()
        self.processes.append(process)

        def ready():
            assert process.alive(), process.tail()
            state = workdir.read_state()
            return state is not None and state.started_at >= started

        wait_for(ready, 120, 0.5, "the coordinator to start")
        return process

    @property
    def join(self) -> str:
        state = Workdir(self.coordinator_dir).read_state()
        assert state is not None, "the coordinator has not started"
        return state.join[0]

    @property
    def repository_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start_peer(self, name: str, *extra: str) -> Process:
        workdir = self.root / "peers" / name
        workdir.mkdir(parents=True, exist_ok=True)
        process = Process(
            name,
            cairn(
                "peer",
                "run",
                "--join",
                self.join,
                "--name",
                name,
                "--workdir",
                str(workdir),
                "--host",
                "127.0.0.1",
                "--torch-threads",
                "1",
                "--no-progress",
                *extra,
            ),
            self.root / f"{name}.log",
        ).start()
        self.processes.append(process)
        return process

    def peer_dir(self, name: str) -> Path:
        return self.root / "peers" / name

    def summary(self, name: str) -> dict:
        return json.loads((self.peer_dir(name) / "peer-summary.json").read_text())

    def ledger(self, query: str, *args) -> list[tuple]:
        path = Workdir(self.coordinator_dir).ledger
        if not path.exists():
            return []
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            return db.execute(query, args).fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            db.close()

    def global_step(self) -> int:
        rows = self.ledger("SELECT COALESCE(MAX(global_step), 0) FROM swarm")
        return int(rows[0][0]) if rows else 0

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.terminate(timeout=45)
        for process in self.processes:
            process.kill_group()


@contextmanager
def swarm_in(root: Path, corpus: str):
    swarm = Swarm(root, corpus)
    try:
        yield swarm
    finally:
        swarm.stop_all()


def descendants(pid: int) -> list[int]:
    """All live descendants of `pid` (from /proc), to check nothing a test started was left behind."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def process_group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members
