"""Apps, keys and usage in SQLite: the ``Store`` of a single node (the default).

``SqliteStore`` provides the primitives ``SqlStore`` (``sql.py``) builds every store
method on: one connection in autocommit mode, so a single change is its own transaction,
and ``BEGIN IMMEDIATE`` for a write of several statements.

The CLI and a running node share one database file; the node notices changes through
SQLite's ``data_version`` and reloads (see ``Keyring``).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .model import SQLITE, tables_sql
from .sql import Cursor, SqlStore

# SQLite keeps integers and 0/1 flags in INTEGER and orders rows by its built-in rowid.
_SCHEMA = tables_sql(integer="INTEGER", boolean="INTEGER", false="0", real="REAL", seq="")


class SqliteStore(SqlStore):
    """The ``Store`` on one SQLite file. Safe to open from several processes."""

    _sql = SQLITE

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        self._db = sqlite3.connect(str(self.path), timeout=10.0, isolation_level=None)
        if new:
            # Secrets live in this file: keep it private to the operator.
            os.chmod(self.path, 0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Bring a database made by an older release up to this schema (added columns only,
        so an older node reading it still works)."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(keys)")}
        if "peer_id_pattern" not in columns:
            try:
                self._db.execute("ALTER TABLE keys ADD COLUMN peer_id_pattern TEXT")
            except sqlite3.OperationalError as exc:
                # Another process opening the same file may have added it first.
                if "duplicate column" not in str(exc):
                    raise

    @contextmanager
    def _write(self) -> Iterator[Cursor]:
        """One transaction, taking the write lock at once (IMMEDIATE), so that a check made
        inside it still holds when it commits; joins the transaction already open."""
        if self._db.in_transaction:
            yield self._db
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _one(self, sql: str, args: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._db.execute(sql, args).fetchone()
        return row

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._db.execute(sql, args).fetchall()

    def _change(self, sql: str, args: Sequence[Any]) -> None:
        # Autocommit: on its own the statement is a transaction; inside _write it joins it.
        self._db.execute(sql, args)

    def _write_usage(self, batch: list[tuple[Any, ...]]) -> None:
        with self._write() as db:
            db.executemany(self._sql.save_usage, batch)

    def _lock_default_app(self, cur: Cursor) -> None:
        # Nothing more to take: _write's BEGIN IMMEDIATE already holds the write lock.
        pass

    def close(self) -> None:
        self._db.close()

    def data_version(self) -> int:
        """Changes whenever another connection commits to the database."""
        row = self._one("PRAGMA data_version")
        assert row is not None
        return int(row[0])
