"""Apps, keys and usage in PostgreSQL: the store of a cluster (``database_url``).

``PostgresStore`` has the interface of the SQLite ``Store`` (it subclasses it, so every caller
typed for ``Store`` takes it), so the CLI, the admin API and the node work on both. Changes
made by other processes are noticed through a version counter that every write bumps in the
same transaction (the node polls ``data_version`` as it does SQLite's).

``open_store(config)`` picks the store: PostgreSQL when ``database_url`` is set, else SQLite.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..extras import missing_extra
from ..protocol import ALL_ACTIONS
from .store import (
    MAX_ACTIVE_KEYS,
    PUBLISHABLE,
    SECRET,
    App,
    Key,
    NotFoundError,
    Store,
    StoreError,
    UsageRow,
    _app,
    _key,
    app_row,
    checked_limits,
    key_row,
    new_app,
    new_key,
    scope_updates,
)

if TYPE_CHECKING:
    import psycopg

    from .config import ServerConfig

_SCHEMA = """
CREATE TABLE IF NOT EXISTS apps (
    id TEXT PRIMARY KEY,
    seq BIGSERIAL,
    name TEXT NOT NULL,
    suspended BOOLEAN NOT NULL DEFAULT FALSE,
    max_connections BIGINT,
    max_messages_per_period BIGINT,
    rate_limit DOUBLE PRECISION,
    rate_burst BIGINT,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    seq BIGSERIAL,
    app_id TEXT NOT NULL REFERENCES apps(id),
    kind TEXT NOT NULL CHECK (kind IN ('publishable', 'secret')),
    secret TEXT,
    name TEXT NOT NULL DEFAULT '',
    channel_patterns TEXT NOT NULL,
    actions TEXT NOT NULL,
    allowed_origins TEXT NOT NULL DEFAULT '[]',
    revoked BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL,
    peer_id_pattern TEXT
);
-- Databases made before the peer id pattern existed get the column (nullable: no default).
ALTER TABLE keys ADD COLUMN IF NOT EXISTS peer_id_pattern TEXT;
CREATE INDEX IF NOT EXISTS keys_app ON keys(app_id);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS usage (
    app_id TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    period_end BIGINT NOT NULL,
    messages BIGINT NOT NULL DEFAULT 0,
    peak_connections BIGINT NOT NULL DEFAULT 0,
    rejected_messages BIGINT NOT NULL DEFAULT 0,
    refused_connections BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (app_id, period_start)
);
INSERT INTO meta (k, v) VALUES ('version', '0') ON CONFLICT (k) DO NOTHING;
"""

_APP_COLS = ("id, name, suspended, max_connections, max_messages_per_period, rate_limit,"
             " rate_burst, created_at")
_KEY_COLS = ("id, app_id, kind, secret, name, channel_patterns, actions, allowed_origins,"
             " revoked, created_at, peer_id_pattern")
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def open_store(config: ServerConfig) -> Store:
    """The store the config names: PostgreSQL (``database_url``) or SQLite (the default)."""
    if config.database_url:
        return PostgresStore(config.database_url, schema=config.database_schema)
    return Store(config.database_path)


class PostgresStore(Store):
    """The ``Store`` interface on PostgreSQL. Safe to use from many nodes at once."""

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
            self._pg: psycopg.Connection[Any] = psycopg.connect(url, autocommit=True)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {exc}") from None
        with self._tx() as cur:
            if schema:
                cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                cur.execute(f'SET search_path TO "{schema}"')
            # Serialise schema creation between processes starting at once.
            cur.execute("SELECT pg_advisory_xact_lock(7880)")
            cur.execute(_SCHEMA)

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Cursor[Any]]:
        with self._pg.transaction(), self._pg.cursor() as cur:
            yield cur

    def _bump(self, cur: psycopg.Cursor[Any]) -> None:
        cur.execute("UPDATE meta SET v = (v::bigint + 1)::text WHERE k = 'version'")

    def _one(self, sql: str, args: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        with self._pg.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchone()

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._pg.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()

    def close(self) -> None:
        self._pg.close()

    def data_version(self) -> int:
        row = self._one("SELECT v FROM meta WHERE k = 'version'")
        return int(row[0]) if row else 0

    def drop_schema(self) -> None:
        """Remove the schema and everything in it (tests)."""
        if not self.schema:
            raise StoreError("drop_schema needs a dedicated schema")
        with self._tx() as cur:
            cur.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')

    # -- apps --------------------------------------------------------------------------------

    def create_app(
        self,
        name: str,
        *,
        max_connections: int | None = None,
        max_messages_per_period: int | None = None,
        rate_limit: float | None = None,
        rate_burst: int | None = None,
        app_id: str | None = None,
    ) -> App:
        app = new_app(name, max_connections=max_connections,
                      max_messages_per_period=max_messages_per_period, rate_limit=rate_limit,
                      rate_burst=rate_burst, app_id=app_id)
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO apps (id, name, suspended, max_connections,"
                " max_messages_per_period, rate_limit, rate_burst, created_at)"
                " VALUES (%s, %s, FALSE, %s, %s, %s, %s, %s)",
                app_row(app),
            )
            self._bump(cur)
        return app

    def list_apps(self) -> list[App]:
        return [_app(r) for r in self._all(f"SELECT {_APP_COLS} FROM apps ORDER BY seq")]

    def get_app(self, app_id: str) -> App:
        row = self._one(f"SELECT {_APP_COLS} FROM apps WHERE id = %s", (app_id,))
        if row is None:
            raise NotFoundError(f"no app with id {app_id!r}")
        return _app(row)

    def set_suspended(self, app_id: str, suspended: bool) -> App:
        self.get_app(app_id)
        with self._tx() as cur:
            cur.execute("UPDATE apps SET suspended = %s WHERE id = %s", (suspended, app_id))
            self._bump(cur)
        return self.get_app(app_id)

    def update_limits(self, app_id: str, **limits: Any) -> App:
        checked = checked_limits(self.get_app(app_id), limits)
        with self._tx() as cur:
            for k, v in checked.items():
                cur.execute(f"UPDATE apps SET {k} = %s WHERE id = %s", (v, app_id))
            self._bump(cur)
        return self.get_app(app_id)

    # -- keys --------------------------------------------------------------------------------

    def create_key(
        self,
        app_id: str,
        kind: str,
        *,
        channel_patterns: Sequence[str] = ("**",),
        actions: Iterable[str] | None = None,
        allowed_origins: Sequence[str] = (),
        name: str = "",
        peer_id_pattern: str | None = None,
    ) -> Key:
        self.get_app(app_id)
        key = new_key(app_id, kind, channel_patterns=channel_patterns, actions=actions,
                      allowed_origins=allowed_origins, name=name,
                      peer_id_pattern=peer_id_pattern)
        row = self._one("SELECT COUNT(*) FROM keys WHERE app_id = %s AND NOT revoked", (app_id,))
        if row is not None and row[0] >= MAX_ACTIVE_KEYS:
            raise StoreError(f"an app can have at most {MAX_ACTIVE_KEYS} active keys; "
                             "revoke one first")
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO keys (id, app_id, kind, secret, name, channel_patterns, actions,"
                " allowed_origins, revoked, created_at, peer_id_pattern)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, FALSE, %s, %s)",
                key_row(key),
            )
            self._bump(cur)
        return key

    def list_keys(self, app_id: str | None = None, *, include_revoked: bool = True) -> list[Key]:
        sql = f"SELECT {_KEY_COLS} FROM keys"
        clauses: list[str] = []
        args: list[Any] = []
        if app_id is not None:
            clauses.append("app_id = %s")
            args.append(app_id)
        if not include_revoked:
            clauses.append("NOT revoked")
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        return [_key(r) for r in self._all(sql + " ORDER BY seq", args)]

    def get_key(self, key_id: str) -> Key:
        row = self._one(f"SELECT {_KEY_COLS} FROM keys WHERE id = %s", (key_id,))
        if row is None:
            raise NotFoundError(f"no key with id {key_id!r}")
        return _key(row)

    def revoke_key(self, key_id: str) -> Key:
        self.get_key(key_id)
        with self._tx() as cur:
            cur.execute("UPDATE keys SET revoked = TRUE WHERE id = %s", (key_id,))
            self._bump(cur)
        return self.get_key(key_id)

    def update_key_scope(
        self,
        key_id: str,
        *,
        channel_patterns: Sequence[str] | None = None,
        actions: Iterable[str] | None = None,
        allowed_origins: Sequence[str] | None = None,
    ) -> Key:
        updates = scope_updates(self.get_key(key_id), channel_patterns, actions,
                                allowed_origins)
        if updates:
            with self._tx() as cur:
                for column, value in updates:
                    cur.execute(f"UPDATE keys SET {column} = %s WHERE id = %s",
                                (value, key_id))
                self._bump(cur)
        return self.get_key(key_id)

    # -- usage -------------------------------------------------------------------------------

    def save_usage(self, rows: Iterable[UsageRow]) -> None:
        batch = list(rows)
        if not batch:
            return
        with self._tx() as cur:
            cur.executemany(
                "INSERT INTO usage (app_id, period_start, period_end, messages,"
                " peak_connections, rejected_messages, refused_connections)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (app_id, period_start) DO UPDATE SET"
                " period_end = excluded.period_end,"
                " messages = GREATEST(usage.messages, excluded.messages),"
                " peak_connections = GREATEST(usage.peak_connections, excluded.peak_connections),"
                " rejected_messages = GREATEST(usage.rejected_messages,"
                " excluded.rejected_messages),"
                " refused_connections = GREATEST(usage.refused_connections,"
                " excluded.refused_connections)",
                [(r.app_id, r.period_start, r.period_end, r.messages, r.peak_connections,
                  r.rejected_messages, r.refused_connections) for r in batch],
            )

    def load_usage(self, period_start: int | None = None) -> list[UsageRow]:
        sql = ("SELECT app_id, period_start, period_end, messages, peak_connections,"
               " rejected_messages, refused_connections FROM usage")
        args: list[Any] = []
        if period_start is not None:
            sql += " WHERE period_start = %s"
            args.append(period_start)
        return [UsageRow(str(r[0]), *(int(v) for v in r[1:])) for r in self._all(sql, args)]

    # -- first start ---------------------------------------------------------------------------

    def ensure_default_app(self) -> tuple[App, list[Key], bool]:
        row = self._one("SELECT v FROM meta WHERE k = 'default_app'")
        if row is not None:
            app = self.get_app(row[0])
            return app, self.list_keys(app.id, include_revoked=False), False
        with self._tx() as cur:
            # One node creates it; the others wait here and then find it.
            cur.execute("SELECT pg_advisory_xact_lock(7881)")
            cur.execute("SELECT v FROM meta WHERE k = 'default_app'")
            found = cur.fetchone()
            if found is None:
                app = self.create_app("default")
                pk = self.create_key(app.id, PUBLISHABLE, actions=ALL_ACTIONS,
                                     name="development (all actions)")
                sk = self.create_key(app.id, SECRET, name="default secret")
                cur.execute("INSERT INTO meta (k, v) VALUES ('default_app', %s)", (app.id,))
                return app, [pk, sk], True
        app = self.get_app(found[0])
        return app, self.list_keys(app.id, include_revoked=False), False
