"""The store of apps, keys and usage: the ``Store`` interface and ``open_store``, which picks
an implementation.

Two implementations side by side, neither built on the other: ``SqliteStore``
(``sqlite.py``, one node, the default) and ``PostgresStore`` (``postgres.py``, a
cluster, ``database_url``). Each holds only its connection and a few primitives; the store
logic they share is ``SqlStore`` (``sql.py``). What both keep and the rules for it
(``App``, ``Key``, their validation, the shared SQL) are in ``model.py``; the names
callers use are importable from here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from .model import (
    LIMIT_COLUMNS,
    MAX_ACTIVE_KEYS,
    PUBLISHABLE,
    SECRET,
    App,
    Key,
    NotFoundError,
    StoreError,
    UsageRow,
    validate_actions,
    validate_patterns,
    validate_peer_id_pattern,
)
from .postgres import PostgresStore
from .sqlite import SqliteStore

if TYPE_CHECKING:
    from ..config import ServerConfig
    from ..webhooks.model import Endpoint

__all__ = [
    "LIMIT_COLUMNS",
    "MAX_ACTIVE_KEYS",
    "PUBLISHABLE",
    "SECRET",
    "App",
    "Key",
    "NotFoundError",
    "PostgresStore",
    "SqliteStore",
    "Store",
    "StoreError",
    "UsageRow",
    "open_store",
    "validate_actions",
    "validate_patterns",
    "validate_peer_id_pattern",
]


class Store(Protocol):
    """What the node, ``AdminOps``, the admin and REST APIs and the CLI use of a store.

    Every method validates its input and raises ``StoreError`` (``NotFoundError`` for an app
    or key that does not exist) with a sentence saying why. Changes by other processes show
    in ``data_version``."""

    def close(self) -> None: ...

    def data_version(self) -> int:
        """A number that changes whenever another process (the CLI, another node) commits a
        change to apps or keys."""
        ...

    def create_app(
        self,
        name: str,
        *,
        max_connections: int | None = None,
        max_messages_per_period: int | None = None,
        rate_limit: float | None = None,
        rate_burst: int | None = None,
        app_id: str | None = None,
    ) -> App: ...

    def list_apps(self) -> list[App]:
        """Every app, oldest first."""
        ...

    def get_app(self, app_id: str) -> App: ...

    def set_suspended(self, app_id: str, suspended: bool) -> App: ...

    def update_limits(self, app_id: str, **limits: Any) -> App:
        """Set any of ``LIMIT_COLUMNS``; None clears that limit."""
        ...

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
        """A new key with fresh credentials (at most ``MAX_ACTIVE_KEYS`` active per app)."""
        ...

    def list_keys(self, app_id: str | None = None, *,
                  include_revoked: bool = True) -> list[Key]:
        """Keys, oldest first: of one app or of all."""
        ...

    def get_key(self, key_id: str) -> Key: ...

    def revoke_key(self, key_id: str) -> Key: ...

    def update_key_scope(
        self,
        key_id: str,
        *,
        channel_patterns: Sequence[str] | None = None,
        actions: Iterable[str] | None = None,
        allowed_origins: Sequence[str] | None = None,
    ) -> Key:
        """Change what a key may do; all changes are checked before any is written."""
        ...

    def save_usage(self, rows: Iterable[UsageRow]) -> None:
        """Write usage counters; within a period a counter never goes down."""
        ...

    def load_usage(self, period_start: int | None = None) -> list[UsageRow]: ...

    def create_webhook(self, app_id: str, url: object, *, events: object = None,
                       channel_patterns: object = None) -> Endpoint:
        """A new webhook endpoint with a fresh signing secret (at most ``MAX_WEBHOOKS`` per
        app)."""
        ...

    def list_webhooks(self, app_id: str | None = None) -> list[Endpoint]: ...

    def get_webhook(self, webhook_id: str) -> Endpoint: ...

    def update_webhook(self, webhook_id: str, *, rotate_secret: bool = False,
                       **fields: object) -> Endpoint: ...

    def delete_webhook(self, webhook_id: str) -> Endpoint: ...

    def ensure_default_app(self) -> tuple[App, list[Key], bool]:
        """The default app, made on first start with a development publishable key (all four
        actions) and a secret key: the app, its active keys, and whether it was new. Safe
        when several processes start at once."""
        ...


def open_store(config: ServerConfig) -> Store:
    """The store the config names: PostgreSQL (``database_url``) or SQLite (the default)."""
    if config.database_url:
        return PostgresStore(config.database_url, schema=config.database_schema)
    return SqliteStore(config.database_path)


if TYPE_CHECKING:
    def _both_are_stores(sqlite: SqliteStore, postgres: PostgresStore) -> tuple[Store, Store]:
        # mypy checks here that each implementation has the whole interface.
        return sqlite, postgres
