"""The ``Store`` logic, written once for every SQL database: ``SqlStore``.

``SqlStore`` implements each method of the ``Store`` protocol (``__init__.py``) with the
statements of a ``Dialect`` (``model.py``) and a few primitives that each backend
provides: reading one row or all rows, one change as its own transaction, a write
transaction, the lock that serialises making the default app, and the usage write.
``SqliteStore`` (``sqlite.py``) and ``PostgresStore`` (``postgres.py``) hold
only those primitives and their connection, schema and change detection.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Protocol

from ...protocol import ALL_ACTIONS
from ..webhooks.model import Endpoint, new_secret
from .model import (
    DEFAULT_APP_NAME,
    DEFAULT_SECRET_KEY_NAME,
    DEV_KEY_NAME,
    MAX_ACTIVE_KEYS,
    MAX_WEBHOOKS,
    PUBLISHABLE,
    SECRET,
    App,
    Dialect,
    Key,
    NotFoundError,
    StoreError,
    UsageRow,
    app_from_row,
    app_row,
    checked_limits,
    key_from_row,
    key_row,
    new_app,
    new_key,
    new_webhook,
    scope_updates,
    usage_from_row,
    usage_params,
    webhook_fields,
    webhook_from_row,
    webhook_row,
)


class Cursor(Protocol):
    """What ``SqlStore`` runs statements on inside a write transaction (a sqlite3
    connection or a psycopg cursor)."""

    def execute(self, sql: str, args: Sequence[Any] = ..., /) -> object: ...

    def executemany(self, sql: str, args: Iterable[Sequence[Any]], /) -> object: ...


class SqlStore(ABC):
    """Every ``Store`` method on top of the backend's primitives (the ``_`` methods below).

    What is atomic is the backend's choice of ``_write`` and ``_change``; the checks made
    here before a write (an app exists, fewer than ``MAX_ACTIVE_KEYS`` keys) are read
    outside that transaction, except in ``ensure_default_app``."""

    _sql: ClassVar[Dialect]

    # -- primitives each backend provides -----------------------------------------------------

    @abstractmethod
    def _one(self, sql: str, args: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        """The first row of a query, or None."""

    @abstractmethod
    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Every row of a query."""

    @abstractmethod
    def _write(self) -> AbstractContextManager[Cursor]:
        """One write transaction that other processes notice; joins one already open."""

    @abstractmethod
    def _change(self, sql: str, args: Sequence[Any]) -> None:
        """One change to apps or keys, atomic on its own (or part of the open transaction)."""

    @abstractmethod
    def _write_usage(self, batch: list[tuple[Any, ...]]) -> None:
        """``Dialect.save_usage`` for each of ``batch`` (not empty), in one transaction."""

    @abstractmethod
    def _lock_default_app(self, cur: Cursor) -> None:
        """Inside ``_write``: make a second process starting at once wait here until the
        first has made the default app."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def data_version(self) -> int: ...

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
        self._change(self._sql.insert_app, app_row(app))
        return app

    def list_apps(self) -> list[App]:
        return [app_from_row(r) for r in self._all(self._sql.list_apps)]

    def get_app(self, app_id: str) -> App:
        row = self._one(self._sql.get_app, (app_id,))
        if row is None:
            raise NotFoundError(f"no app with id {app_id!r}")
        return app_from_row(row)

    def set_suspended(self, app_id: str, suspended: bool) -> App:
        self.get_app(app_id)
        self._change(self._sql.set_suspended, (suspended, app_id))
        return self.get_app(app_id)

    def update_limits(self, app_id: str, **limits: Any) -> App:
        """Set any of max_connections, max_messages_per_period, rate_limit, rate_burst.
        A value of None clears that limit."""
        checked = checked_limits(self.get_app(app_id), limits)
        with self._write() as cur:
            for column, value in checked.items():
                cur.execute(self._sql.set_limit(column), (value, app_id))
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
        row = self._one(self._sql.count_active_keys, (app_id,))
        if row is not None and row[0] >= MAX_ACTIVE_KEYS:
            raise StoreError(f"an app can have at most {MAX_ACTIVE_KEYS} active keys; "
                             "revoke one first")
        self._change(self._sql.insert_key, key_row(key))
        return key

    def list_keys(self, app_id: str | None = None, *, include_revoked: bool = True) -> list[Key]:
        sql, args = self._sql.list_keys(app_id, include_revoked)
        return [key_from_row(r) for r in self._all(sql, args)]

    def get_key(self, key_id: str) -> Key:
        row = self._one(self._sql.get_key, (key_id,))
        if row is None:
            raise NotFoundError(f"no key with id {key_id!r}")
        return key_from_row(row)

    def revoke_key(self, key_id: str) -> Key:
        self.get_key(key_id)
        self._change(self._sql.revoke_key, (key_id,))
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
            with self._write() as cur:
                for column, value in updates:
                    cur.execute(self._sql.set_key_column(column), (value, key_id))
        return self.get_key(key_id)

    # -- usage -------------------------------------------------------------------------------

    def save_usage(self, rows: Iterable[UsageRow]) -> None:
        """Write usage counters (one transaction; the counters only grow within a period)."""
        batch = usage_params(rows)
        if batch:
            self._write_usage(batch)

    def load_usage(self, period_start: int | None = None) -> list[UsageRow]:
        """Stored usage rows, optionally only those of the period starting at ``period_start``."""
        sql, args = self._sql.load_usage(period_start)
        return [usage_from_row(r) for r in self._all(sql, args)]

    # -- webhooks -----------------------------------------------------------------------------

    def create_webhook(self, app_id: str, url: object, *, events: object = None,
                       channel_patterns: object = None) -> Endpoint:
        self.get_app(app_id)
        endpoint = new_webhook(app_id, url, events=events, channel_patterns=channel_patterns)
        if len(self.list_webhooks(app_id)) >= MAX_WEBHOOKS:
            raise StoreError(f"an app can have at most {MAX_WEBHOOKS} webhook endpoints; "
                             "delete one first")
        self._change(self._sql.insert_webhook, webhook_row(endpoint))
        return endpoint

    def list_webhooks(self, app_id: str | None = None) -> list[Endpoint]:
        sql, args = self._sql.list_webhooks(app_id)
        return [webhook_from_row(r) for r in self._all(sql, args)]

    def get_webhook(self, webhook_id: str) -> Endpoint:
        row = self._one(self._sql.get_webhook, (webhook_id,))
        if row is None:
            raise NotFoundError(f"no webhook endpoint with id {webhook_id!r}")
        return webhook_from_row(row)

    def update_webhook(self, webhook_id: str, *, rotate_secret: bool = False,
                       **fields: object) -> Endpoint:
        """Change any of url, events, channel_patterns, enabled; ``rotate_secret`` makes a
        new signing secret (the old one stops working at once)."""
        self.get_webhook(webhook_id)
        checked = webhook_fields(**fields)
        values: list[tuple[str, Any]] = []
        for column, value in checked.items():
            if column in ("events", "channel_patterns"):
                value = json.dumps(sorted(value) if column == "events" else list(value))
            values.append((column, value))
        if rotate_secret:
            values.append(("secret", new_secret()))
        if values:
            with self._write() as cur:
                for column, value in values:
                    cur.execute(self._sql.set_webhook_column(column), (value, webhook_id))
        return self.get_webhook(webhook_id)

    def delete_webhook(self, webhook_id: str) -> Endpoint:
        endpoint = self.get_webhook(webhook_id)
        self._change(self._sql.delete_webhook, (webhook_id,))
        return endpoint

    # -- first start ---------------------------------------------------------------------------

    def ensure_default_app(self) -> tuple[App, list[Key], bool]:
        """Create the default app with a development publishable key (all four actions) and a
        secret key on first start. Returns the app, its active keys, and whether it was new."""
        found = self._one(self._sql.get_default_app)
        if found is None:
            with self._write() as cur:
                # Of two processes starting at once, the second waits here and then finds
                # the first one's app.
                self._lock_default_app(cur)
                found = self._one(self._sql.get_default_app)
                if found is None:
                    app = self.create_app(DEFAULT_APP_NAME)
                    pk = self.create_key(app.id, PUBLISHABLE, actions=ALL_ACTIONS,
                                         name=DEV_KEY_NAME)
                    sk = self.create_key(app.id, SECRET, name=DEFAULT_SECRET_KEY_NAME)
                    cur.execute(self._sql.set_default_app, (app.id,))
                    return app, [pk, sk], True
        app = self.get_app(found[0])
        return app, self.list_keys(app.id, include_revoked=False), False
