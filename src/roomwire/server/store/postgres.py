"""Apps, keys and usage in PostgreSQL: the ``Store`` of a cluster (``database_url``).

``PostgresStore`` provides the primitives ``SqlStore`` (``sql.py``) builds every
``Store`` method on, as ``SqliteStore`` does, with the same statements
(``store_model.Dialect``), so the CLI, the admin API and the node work on both. Changes
made by other processes are noticed through a version counter that every write bumps in the
same transaction (the node polls ``data_version`` as it does SQLite's).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ...extras import missing_extra
from .model import POSTGRES, StoreError, tables_sql
from .sql import Cursor, SqlStore

if TYPE_CHECKING:
    import psycopg

# PostgreSQL's BIGINT holds what SQLite's INTEGER does; ``seq`` orders rows as inserted.
_SCHEMA = tables_sql(
    integer="BIGINT", boolean="BOOLEAN", false="FALSE", real="DOUBLE PRECISION",
    seq="\n    seq BIGSERIAL,",
) + """
-- Databases made before the peer id pattern existed get the column (nullable: no default).
ALTER TABLE keys ADD COLUMN IF NOT EXISTS peer_id_pattern TEXT;
INSERT INTO meta (k, v) VALUES ('version', '0') ON CONFLICT (k) DO NOTHING;
"""
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class PostgresStore(SqlStore):
    """The ``Store`` on PostgreSQL. Safe to use from many nodes at once."""

    _sql = POSTGRES

    def __init__(self, url: str, *, schema: str | None = None) -> None:
        try:
            import psycopg
        except ImportError as exc:  # a PostgreSQL URL without the optional driver
            raise missing_extra("cluster", exc, "the PostgreSQL store") from exc

        if schema is not None and not _SCHEMA_NAME.match(schema):
            raise StoreError(f"database schema {schema!r} is not a plain SQL identifier")
        self.url = url
        self.schema = schema
        try:
            self._pg: psycopg.Connection[Any] = psycopg.connect(url, autocommit=True,
                                                               client_encoding="UTF8")
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {exc}") from None
        with self._pg.transaction(), self._pg.cursor() as cur:
            if schema:
                cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                cur.execute(f'SET search_path TO "{schema}"')
            # Serialise schema creation between processes starting at once.
            cur.execute("SELECT pg_advisory_xact_lock(7880)")
            cur.execute(_SCHEMA)

    @contextmanager
    def _write(self) -> Iterator[Cursor]:
        """One transaction (a savepoint inside one already open) that also bumps the version
        counter, so every other node sees the change at its next poll."""
        with self._pg.transaction(), self._pg.cursor() as cur:
            yield cur
            cur.execute("UPDATE meta SET v = (v::bigint + 1)::text WHERE k = 'version'")

    def _one(self, sql: str, args: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        with self._pg.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchone()

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._pg.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()

    def _change(self, sql: str, args: Sequence[Any]) -> None:
        with self._write() as cur:
            cur.execute(sql, args)

    def _write_usage(self, batch: list[tuple[Any, ...]]) -> None:
        # Usage is no app or key change: no version bump, the nodes need not reload.
        with self._pg.transaction(), self._pg.cursor() as cur:
            cur.executemany(self._sql.save_usage, batch)

    def _lock_default_app(self, cur: Cursor) -> None:
        # One node creates it; the others wait here (until its transaction ends).
        cur.execute("SELECT pg_advisory_xact_lock(7881)")

    def close(self) -> None:
        self._pg.close()

    def data_version(self) -> int:
        row = self._one("SELECT v FROM meta WHERE k = 'version'")
        return int(row[0]) if row else 0

    def drop_schema(self) -> None:
        """Remove the schema and everything in it (tests)."""
        if not self.schema:
            raise StoreError("drop_schema needs a dedicated schema")
        with self._pg.transaction(), self._pg.cursor() as cur:
            cur.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
