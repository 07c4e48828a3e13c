"""The persisted, bounded webhook outbox of one node: SQLite in the node's data directory.

Every event an endpoint wants is a row (endpoint, event JSON) committed before it counts as
accepted; a row leaves when its endpoint answered 2xx or its retries ran out. WAL mode with
``synchronous=NORMAL``: a committed row survives the process being killed (kill -9); only an
operating-system crash or power loss can lose the last transactions. Rows are read back in
insertion order per endpoint, which is what keeps each channel's order.

The per-endpoint stream sequence numbers live here too, written in the same transaction as
the events that used them, so a restart continues each sequence without a gap or a repeat.

In a cluster each node keeps its own outbox (the events it emitted): no extra network hop on
accept, and a node that is killed delivers its rows when it comes back on the same disk. The
price: rows of a node whose disk is lost for good are lost with it (docs/operations.md).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint TEXT NOT NULL,
    event TEXT NOT NULL,
    accepted REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_endpoint ON deliveries (endpoint, id);
CREATE TABLE IF NOT EXISTS held (
    fact TEXT NOT NULL,
    remaining REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS seqs (
    endpoint TEXT NOT NULL,
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (endpoint, stream)
);
"""


class Outbox:
    """Rows per endpoint, oldest first; at most ``limit`` per endpoint."""

    def __init__(self, path: Path | str, limit: int) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.limit = limit
        self._db = sqlite3.connect(str(self.path), isolation_level=None, timeout=10.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self.depth: dict[str, int] = {
            e: n for e, n in self._db.execute(
                "SELECT endpoint, COUNT(*) FROM deliveries GROUP BY endpoint")}
        self._seqs: dict[tuple[str, str], int] = {}

    def close(self) -> None:
        self._db.close()

    def next_seq(self, endpoint: str, stream: str) -> int:
        """The next number of ``stream`` for ``endpoint`` (saved with the next ``add``)."""
        key = (endpoint, stream)
        seq = self._seqs.get(key)
        if seq is None:
            row = self._db.execute("SELECT seq FROM seqs WHERE endpoint = ? AND stream = ?",
                                   key).fetchone()
            seq = int(row[0]) if row else 0
        seq += 1
        self._seqs[key] = seq
        return seq

    def has_room(self, endpoint: str) -> bool:
        return self.depth.get(endpoint, 0) < self.limit

    def add(self, rows: Iterable[tuple[str, str, float]],
            seqs: Iterable[tuple[str, str, int]]) -> None:
        """Commit ``(endpoint, event JSON, accepted at)`` rows and the sequence numbers they
        used, in one transaction. The caller checked ``has_room`` for each."""
        batch = list(rows)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                "INSERT INTO deliveries (endpoint, event, accepted) VALUES (?, ?, ?)", batch)
            self._db.executemany(
                "INSERT INTO seqs (endpoint, stream, seq) VALUES (?, ?, ?) "
                "ON CONFLICT (endpoint, stream) DO UPDATE SET seq = excluded.seq", list(seqs))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        for endpoint, _, _ in batch:
            self.depth[endpoint] = self.depth.get(endpoint, 0) + 1

    def take(self, endpoint: str, limit: int) -> list[tuple[int, str, float]]:
        """The oldest ``limit`` rows of ``endpoint``: (row id, event JSON, accepted at)."""
        return [(int(i), str(e), float(a)) for i, e, a in self._db.execute(
            "SELECT id, event, accepted FROM deliveries WHERE endpoint = ? ORDER BY id LIMIT ?",
            (endpoint, limit))]

    def remove(self, endpoint: str, row_ids: list[int]) -> None:
        if not row_ids:
            return
        self._db.execute(
            f"DELETE FROM deliveries WHERE id IN ({','.join('?' * len(row_ids))})", row_ids)
        self.depth[endpoint] = max(0, self.depth.get(endpoint, 0) - len(row_ids))

    def drop_endpoint(self, endpoint: str) -> int:
        """Forget an endpoint that no longer exists; returns how many rows were dropped."""
        n = self.depth.pop(endpoint, 0)
        self._db.execute("DELETE FROM deliveries WHERE endpoint = ?", (endpoint,))
        self._db.execute("DELETE FROM seqs WHERE endpoint = ?", (endpoint,))
        for key in [k for k in self._seqs if k[0] == endpoint]:
            del self._seqs[key]
        return n

    def save_held(self, facts: list[tuple[str, float]]) -> None:
        """Leaves still in their grace when the node stopped: (fact JSON, seconds left)."""
        self._db.execute("BEGIN IMMEDIATE")
        self._db.executemany("INSERT INTO held (fact, remaining) VALUES (?, ?)", facts)
        self._db.execute("COMMIT")

    def take_held(self) -> list[tuple[str, float]]:
        """The leaves a previous run kept, removed from the file."""
        rows = [(str(f), float(r)) for f, r in self._db.execute(
            "SELECT fact, remaining FROM held ORDER BY rowid")]
        self._db.execute("DELETE FROM held")
        return rows

    def endpoints(self) -> list[str]:
        """Endpoints with rows waiting."""
        return [e for e, n in self.depth.items() if n > 0]
