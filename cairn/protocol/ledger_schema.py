"""The contribution ledger's SQLite schema: written by the coordinator, read by the dashboard.

It lives in the contract because two roles depend on it and neither may import the other. The
dashboard opens the file read-only (`open_readonly`); only the coordinator writes.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from cairn.protocol.errors import CairnError

SCHEMA_VERSION = 3  # 2: records.collapsed; 3: peers.forfeited_samples, peers.start_step (migrated in place by `connect`)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

-- one row per contributor, keyed by the public id of the RSA key that signs its records
CREATE TABLE IF NOT EXISTS peers (
    public_id TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    peer_id TEXT NOT NULL,
    device TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    claimed_samples INTEGER NOT NULL DEFAULT 0,   -- sum of the increments the peer claimed
    credited_samples INTEGER NOT NULL DEFAULT 0,  -- what the ledger accepted (capped by the global step)
    seconds_online REAL NOT NULL DEFAULT 0,
    shards_completed INTEGER NOT NULL DEFAULT 0,
    last_counter INTEGER NOT NULL DEFAULT 0,      -- the peer's own samples counter at its last record
    last_uptime REAL NOT NULL DEFAULT 0,
    forfeited_samples INTEGER NOT NULL DEFAULT 0, -- claims and credit a failed spot check took back
    start_step INTEGER NOT NULL DEFAULT 0         -- the global step from which its claims are explained (cairn.coordinator.ledger.claim_of)
);

-- every accepted record, for per-contributor history and convergence charts
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    public_id TEXT NOT NULL REFERENCES peers(public_id),
    reported_at REAL NOT NULL,
    received_at REAL NOT NULL,
    samples INTEGER NOT NULL,
    steps INTEGER NOT NULL,
    loss REAL NOT NULL,
    samples_per_second REAL NOT NULL,
    epoch INTEGER NOT NULL,
    shard INTEGER NOT NULL,
    credited_delta INTEGER NOT NULL,
    collapsed INTEGER NOT NULL DEFAULT 0,         -- the peer's loss was stuck at chance when it reported
    UNIQUE (public_id, reported_at)
);
CREATE INDEX IF NOT EXISTS records_by_peer ON records (public_id, reported_at);

-- swarm-wide snapshots taken at every poll
CREATE TABLE IF NOT EXISTS swarm (
    at REAL PRIMARY KEY,
    global_step INTEGER NOT NULL,
    peers_online INTEGER NOT NULL,
    samples_per_second REAL NOT NULL,
    mean_loss REAL,
    credit_cap INTEGER NOT NULL,
    last_allreduce_at REAL
);

-- spot checks: the coordinator recomputed a peer's reported probe loss from the averaged state
CREATE TABLE IF NOT EXISTS spot_checks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    public_id TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    claimed_loss REAL NOT NULL,
    recomputed_loss REAL NOT NULL,
    passed INTEGER NOT NULL,
    checked_at REAL NOT NULL,
    UNIQUE (public_id, epoch)
);

CREATE TABLE IF NOT EXISTS releases (
    version TEXT PRIMARY KEY,
    parent_version TEXT,
    global_step INTEGER NOT NULL,
    samples_seen INTEGER NOT NULL,
    created_at REAL NOT NULL,
    manifest_json TEXT NOT NULL
);
"""


def connect(path: Path) -> sqlite3.Connection:
    """Writer connection: WAL + synchronous=FULL, so an acknowledged commit survives kill -9.

    The caller serialises use (the coordinator runs all ledger work on one worker thread).
    """
    connection = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    connection.row_factory = sqlite3.Row
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.executescript(SCHEMA)
    _migrate(connection)
    connection.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    return connection


# columns added after version 1: (table, column, definition); CREATE TABLE IF NOT EXISTS leaves an old table as it was
MIGRATIONS = (
    ("records", "collapsed", "INTEGER NOT NULL DEFAULT 0"),
    ("peers", "forfeited_samples", "INTEGER NOT NULL DEFAULT 0"),
    ("peers", "start_step", "INTEGER NOT NULL DEFAULT 0"),
)


def _migrate(connection: sqlite3.Connection) -> None:
    """Bring a ledger written by an older coordinator up to SCHEMA_VERSION; its rows keep their values."""
    for table, column, definition in MIGRATIONS:
        if not has_column(connection, table, column):
            connection.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
    connection.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))


def has_column(connection: sqlite3.Connection, table: str, column: str) -> bool:
    """Readers use it too: the dashboard may read a ledger that an older coordinator still writes."""
    return any(row[1] == column for row in connection.execute(f"PRAGMA table_info({table})"))


def open_readonly(path: Path) -> sqlite3.Connection:
    """Reader connection (dashboard): the file is opened with mode=ro, so a bug cannot write to it."""
    path = Path(path)
    if not path.exists():
        raise CairnError(f"{path}: no ledger yet (is the coordinator running with this workdir?)")
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0, check_same_thread=False)
    connection.row_factory = sqlite3.Row
    return connection


def swarm_progress(path: Path) -> tuple[int, list[tuple[str, int]]]:
    """(global step, [(display name, credited samples)]) for `cairn swarm`'s progress line, read-only.

    Here rather than in the peer package: the ledger's tables are the coordinator's, and a reader outside it
    goes through the contract. A ledger not written yet, or one mid-creation, reads as no progress.
    """
    try:
        db = open_readonly(path)
        try:
            step = db.execute("SELECT COALESCE(MAX(global_step), 0) FROM swarm").fetchone()[0]
            peers = db.execute("SELECT display_name, credited_samples FROM peers ORDER BY display_name").fetchall()
        finally:
            db.close()
    except (sqlite3.Error, CairnError):  # CairnError: no ledger (yet)
        return 0, []
    return int(step), [(name, int(samples)) for name, samples in peers]


def latest_release_version(path: Path) -> str | None:
    """The version of the newest release the ledger records (None without a ledger or a release)."""
    if not Path(path).exists():
        return None
    db = open_readonly(path)
    try:
        row = db.execute("SELECT version FROM releases ORDER BY created_at DESC LIMIT 1").fetchone()
    finally:
        db.close()
    return row["version"] if row else None
