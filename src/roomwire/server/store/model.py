"""What both stores keep, and the rules for it: apps, keys, usage rows; their validation; and
the SQL that SQLite and PostgreSQL share.

Pure (no connection is opened here): ``sqlite.py`` and ``postgres.py`` each hold
a connection and run these statements in their own dialect (``Dialect``); ``__init__.py`` names
the interface both implement (``Store``) and picks one (``open_store``).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...protocol import ALL_ACTIONS
from ...protocol.claims import peer_id_allowed
from ...protocol.patterns import pattern_problem
from ..webhooks.model import DEFAULT_EVENT_TYPES, Endpoint, new_endpoint_id, new_secret
from ..webhooks.policy import events_problem, patterns_problem, url_problem

PUBLISHABLE = "publishable"
SECRET = "secret"


@dataclass(frozen=True)
class UsageRow:
    """Usage counters of one app in one period, as stored."""

    app_id: str
    period_start: int
    period_end: int
    messages: int = 0
    peak_connections: int = 0
    rejected_messages: int = 0
    refused_connections: int = 0


class StoreError(ValueError):
    """A store operation was refused; the message says why."""


class NotFoundError(StoreError):
    """The app or key named does not exist."""


@dataclass(frozen=True)
class App:
    id: str
    name: str
    suspended: bool = False
    max_connections: int | None = None
    max_messages_per_period: int | None = None
    rate_limit: float | None = None
    rate_burst: int | None = None
    created_at: int = 0

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "suspended": self.suspended,
            "maxConnections": self.max_connections,
            "maxMessagesPerPeriod": self.max_messages_per_period,
            "rateLimit": self.rate_limit,
            "rateBurst": self.rate_burst,
            "createdAt": self.created_at,
        }


@dataclass(frozen=True)
class Key:
    id: str
    app_id: str
    kind: str
    channel_patterns: tuple[str, ...]
    actions: frozenset[str]
    allowed_origins: tuple[str, ...] = ()
    secret: str | None = field(default=None, repr=False)
    name: str = ""
    revoked: bool = False
    created_at: int = 0
    peer_id_pattern: str | None = None
    """Secret keys: the peer ids this key may mint tokens for and kick (a channel-pattern
    glob over the peer id); None: any peer id of the app."""

    def may_act_for(self, peer_id: str) -> bool:
        """Whether this key may mint a token for, or kick, ``peer_id``."""
        return peer_id_allowed(self.peer_id_pattern, peer_id)

    def public(self, *, include_secret: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "appId": self.app_id,
            "kind": self.kind,
            "name": self.name,
            "channelPatterns": list(self.channel_patterns),
            "actions": sorted(self.actions),
            "allowedOrigins": list(self.allowed_origins),
            "revoked": self.revoked,
            "createdAt": self.created_at,
            "peerIdPattern": self.peer_id_pattern,
        }
        if include_secret and self.secret is not None:
            out["secret"] = self.secret
        return out


def validate_patterns(patterns: Sequence[str]) -> tuple[str, ...]:
    if not patterns:
        raise StoreError("a key needs at least one channel pattern (use '**' for every channel)")
    for p in patterns:
        problem = pattern_problem(p)
        if problem is not None:
            raise StoreError(problem)
    return tuple(patterns)


def validate_peer_id_pattern(kind: str, pattern: str | None) -> str | None:
    """A key's peer-id pattern, checked like a channel pattern; secret keys only (a
    publishable key's peers get random ids)."""
    if pattern is None:
        return None
    if kind != SECRET:
        raise StoreError("a peer id pattern applies to secret keys only")
    problem = pattern_problem(pattern)
    if problem is not None:
        raise StoreError(f"peer id pattern: {problem}")
    return pattern


def validate_actions(actions: Iterable[str]) -> frozenset[str]:
    acts = frozenset(actions)
    unknown = acts - ALL_ACTIONS
    if unknown:
        raise StoreError(
            f"unknown action(s) {sorted(unknown)}; choose from publish, subscribe, presence, send"
        )
    return acts


MAX_ACTIVE_KEYS = 50
LIMIT_COLUMNS = ("max_connections", "max_messages_per_period", "rate_limit", "rate_burst")


def new_app(
    name: str,
    *,
    max_connections: int | None = None,
    max_messages_per_period: int | None = None,
    rate_limit: float | None = None,
    rate_burst: int | None = None,
    app_id: str | None = None,
) -> App:
    """A validated new app, not yet stored (shared by every store)."""
    if not name or len(name) > 200:
        raise StoreError("an app name must be 1 to 200 characters")
    _check_limits(max_connections, max_messages_per_period, rate_limit, rate_burst)
    return App(
        id=app_id or "app_" + secrets.token_hex(8), name=name,
        max_connections=max_connections, max_messages_per_period=max_messages_per_period,
        rate_limit=rate_limit, rate_burst=rate_burst, created_at=int(time.time()),
    )


def checked_limits(current: App, limits: dict[str, Any]) -> dict[str, Any]:
    """``limits`` validated against the app's other limits; raises StoreError."""
    unknown = set(limits) - set(LIMIT_COLUMNS)
    if unknown:
        raise StoreError(f"unknown limit(s): {sorted(unknown)}")
    merged = {k: getattr(current, k) for k in LIMIT_COLUMNS}
    merged.update(limits)
    _check_limits(merged["max_connections"], merged["max_messages_per_period"],
                  merged["rate_limit"], merged["rate_burst"])
    return dict(limits)


def _check_origins(kind: str, origins: Sequence[str]) -> tuple[str, ...]:
    for origin in origins:
        if not origin or any(c.isspace() for c in origin):
            raise StoreError(f"allowed origin {origin!r} is not a valid origin")
    if kind == SECRET and origins:
        raise StoreError("allowed origins apply to publishable keys only")
    return tuple(origins)


def new_key(
    app_id: str,
    kind: str,
    *,
    channel_patterns: Sequence[str] = ("**",),
    actions: Iterable[str] | None = None,
    allowed_origins: Sequence[str] = (),
    name: str = "",
    peer_id_pattern: str | None = None,
) -> Key:
    """A validated new key with fresh credentials, not yet stored (shared by every store).
    Publishable keys default to publish, subscribe and presence (send is off, as hosted)."""
    if kind not in (PUBLISHABLE, SECRET):
        raise StoreError("a key kind is 'publishable' or 'secret'")
    patterns = validate_patterns(list(channel_patterns))
    if actions is None:
        acts = (frozenset({"publish", "subscribe", "presence"}) if kind == PUBLISHABLE
                else ALL_ACTIONS)
    else:
        acts = validate_actions(actions)
    origins = _check_origins(kind, allowed_origins)
    peers = validate_peer_id_pattern(kind, peer_id_pattern)
    if kind == PUBLISHABLE:
        key_id, secret = "pk_live_" + secrets.token_hex(16), None
    else:
        key_id, secret = "sk_id_" + secrets.token_hex(12), "sk_secret_" + secrets.token_hex(24)
    return Key(
        id=key_id, app_id=app_id, kind=kind, channel_patterns=patterns, actions=acts,
        allowed_origins=origins, secret=secret, name=name, created_at=int(time.time()),
        peer_id_pattern=peers,
    )


def scope_updates(
    key: Key,
    channel_patterns: Sequence[str] | None,
    actions: Iterable[str] | None,
    allowed_origins: Sequence[str] | None,
) -> list[tuple[str, str]]:
    """Validated (column, JSON value) pairs for a scope change; all checked before any is
    written, so a refused change leaves the key as it was."""
    updates: list[tuple[str, str]] = []
    if channel_patterns is not None:
        updates.append(("channel_patterns",
                        json.dumps(list(validate_patterns(list(channel_patterns))))))
    if actions is not None:
        updates.append(("actions", json.dumps(sorted(validate_actions(actions)))))
    if allowed_origins is not None:
        updates.append(("allowed_origins",
                        json.dumps(list(_check_origins(key.kind, allowed_origins)))))
    return updates


def key_row(key: Key) -> tuple[Any, ...]:
    """The column values of a new key, in the INSERT order both stores use."""
    return (key.id, key.app_id, key.kind, key.secret, key.name,
            json.dumps(list(key.channel_patterns)), json.dumps(sorted(key.actions)),
            json.dumps(list(key.allowed_origins)), key.created_at, key.peer_id_pattern)


def app_row(app: App) -> tuple[Any, ...]:
    return (app.id, app.name, app.max_connections, app.max_messages_per_period,
            app.rate_limit, app.rate_burst, app.created_at)


def _check_limits(
    max_connections: int | None,
    max_messages: int | None,
    rate_limit: float | None,
    rate_burst: int | None,
) -> None:
    if max_connections is not None and max_connections < 0:
        raise StoreError("max_connections must be >= 0")
    if max_messages is not None and max_messages < 0:
        raise StoreError("max_messages_per_period must be >= 0")
    if rate_limit is not None and rate_limit < 0:
        raise StoreError("rate_limit must be >= 0 (0 disables it)")
    if rate_burst is not None and rate_burst < 1:
        raise StoreError("rate_burst must be >= 1")


# -- rows and the SQL both stores share ------------------------------------------------------

APP_COLUMNS = ("id, name, suspended, max_connections, max_messages_per_period, rate_limit,"
               " rate_burst, created_at")
KEY_COLUMNS = ("id, app_id, kind, secret, name, channel_patterns, actions, allowed_origins,"
               " revoked, created_at, peer_id_pattern")
USAGE_COLUMNS = ("app_id, period_start, period_end, messages, peak_connections,"
                 " rejected_messages, refused_connections")
_COUNTERS = ("messages", "peak_connections", "rejected_messages", "refused_connections")


def app_from_row(r: Sequence[Any]) -> App:
    """An ``App`` from a row of ``APP_COLUMNS`` (either database)."""
    return App(
        id=r[0], name=r[1], suspended=bool(r[2]), max_connections=r[3],
        max_messages_per_period=r[4], rate_limit=r[5], rate_burst=r[6], created_at=r[7],
    )


def key_from_row(r: Sequence[Any]) -> Key:
    """A ``Key`` from a row of ``KEY_COLUMNS`` (either database)."""
    return Key(
        id=r[0], app_id=r[1], kind=r[2], secret=r[3], name=r[4],
        channel_patterns=tuple(json.loads(r[5])), actions=frozenset(json.loads(r[6])),
        allowed_origins=tuple(json.loads(r[7])), revoked=bool(r[8]), created_at=r[9],
        peer_id_pattern=r[10],
    )


def usage_from_row(r: Sequence[Any]) -> UsageRow:
    """A ``UsageRow`` from a row of ``USAGE_COLUMNS``; PostgreSQL's BIGINTs read as ints."""
    return UsageRow(str(r[0]), *(int(v) for v in r[1:]))


def usage_params(rows: Iterable[UsageRow]) -> list[tuple[Any, ...]]:
    """The values of ``Dialect.save_usage`` for each row, in ``USAGE_COLUMNS`` order."""
    return [(r.app_id, r.period_start, r.period_end, r.messages, r.peak_connections,
             r.rejected_messages, r.refused_connections) for r in rows]


@dataclass(frozen=True)
class Dialect:
    """The statements of both stores, written once; the three ways the two dialects differ
    are its fields. Both schemas have the same tables and column names (``suspended`` and
    ``revoked`` are BOOLEAN in PostgreSQL, 0/1 in SQLite, and both read TRUE/FALSE)."""

    param: str
    """The placeholder: ``?`` (sqlite3) or ``%s`` (psycopg)."""
    insertion_order: str
    """A column that orders rows as they were inserted: SQLite's ``rowid``, PostgreSQL's
    ``seq``."""
    greatest: str
    """The scalar maximum of two values: SQLite's ``MAX``, PostgreSQL's ``GREATEST``."""

    def _params(self, n: int) -> str:
        return ", ".join([self.param] * n)

    @property
    def insert_app(self) -> str:
        """Values: ``app_row(app)``."""
        return ("INSERT INTO apps (id, name, max_connections, max_messages_per_period,"
                f" rate_limit, rate_burst, created_at) VALUES ({self._params(7)})")

    @property
    def list_apps(self) -> str:
        return f"SELECT {APP_COLUMNS} FROM apps ORDER BY {self.insertion_order}"

    @property
    def get_app(self) -> str:
        return f"SELECT {APP_COLUMNS} FROM apps WHERE id = {self.param}"

    @property
    def set_suspended(self) -> str:
        return f"UPDATE apps SET suspended = {self.param} WHERE id = {self.param}"

    def set_limit(self, column: str) -> str:
        """``column`` is one of ``LIMIT_COLUMNS`` (``checked_limits`` refuses others)."""
        if column not in LIMIT_COLUMNS:
            raise StoreError(f"unknown limit {column!r}")
        return f"UPDATE apps SET {column} = {self.param} WHERE id = {self.param}"

    @property
    def count_active_keys(self) -> str:
        return f"SELECT COUNT(*) FROM keys WHERE app_id = {self.param} AND NOT revoked"

    @property
    def insert_key(self) -> str:
        """Values: ``key_row(key)``."""
        return ("INSERT INTO keys (id, app_id, kind, secret, name, channel_patterns, actions,"
                f" allowed_origins, created_at, peer_id_pattern) VALUES ({self._params(10)})")

    def list_keys(self, app_id: str | None,
                  include_revoked: bool) -> tuple[str, list[Any]]:
        sql = f"SELECT {KEY_COLUMNS} FROM keys"
        clauses: list[str] = []
        args: list[Any] = []
        if app_id is not None:
            clauses.append(f"app_id = {self.param}")
            args.append(app_id)
        if not include_revoked:
            clauses.append("NOT revoked")
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        return sql + f" ORDER BY {self.insertion_order}", args

    @property
    def get_key(self) -> str:
        return f"SELECT {KEY_COLUMNS} FROM keys WHERE id = {self.param}"

    @property
    def revoke_key(self) -> str:
        return f"UPDATE keys SET revoked = TRUE WHERE id = {self.param}"

    def set_key_column(self, column: str) -> str:
        """``column`` comes from ``scope_updates``."""
        if column not in ("channel_patterns", "actions", "allowed_origins"):
            raise StoreError(f"not a key scope column: {column!r}")
        return f"UPDATE keys SET {column} = {self.param} WHERE id = {self.param}"

    @property
    def save_usage(self) -> str:
        """Values: ``usage_params(rows)``. Within a period the counters only grow, so a
        node's write never lowers what another node wrote."""
        kept = ", ".join(f"{c} = {self.greatest}(usage.{c}, excluded.{c})" for c in _COUNTERS)
        return (f"INSERT INTO usage ({USAGE_COLUMNS}) VALUES ({self._params(7)})"
                " ON CONFLICT (app_id, period_start) DO UPDATE SET"
                f" period_end = excluded.period_end, {kept}")

    def load_usage(self, period_start: int | None) -> tuple[str, list[Any]]:
        sql = f"SELECT {USAGE_COLUMNS} FROM usage"
        if period_start is None:
            return sql, []
        return sql + f" WHERE period_start = {self.param}", [period_start]

    get_default_app = "SELECT v FROM meta WHERE k = 'default_app'"

    @property
    def insert_webhook(self) -> str:
        """Values: ``webhook_row(endpoint)``."""
        return ("INSERT INTO webhooks (id, app_id, url, events, channel_patterns, secret,"
                f" enabled, created_at) VALUES ({self._params(8)})")

    def list_webhooks(self, app_id: str | None) -> tuple[str, list[Any]]:
        sql = f"SELECT {WEBHOOK_COLUMNS} FROM webhooks"
        if app_id is None:
            return sql + f" ORDER BY {self.insertion_order}", []
        return (sql + f" WHERE app_id = {self.param} ORDER BY {self.insertion_order}",
                [app_id])

    @property
    def get_webhook(self) -> str:
        return f"SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = {self.param}"

    @property
    def delete_webhook(self) -> str:
        return f"DELETE FROM webhooks WHERE id = {self.param}"

    def set_webhook_column(self, column: str) -> str:
        if column not in WEBHOOK_MUTABLE:
            raise StoreError(f"not a webhook column: {column!r}")
        return f"UPDATE webhooks SET {column} = {self.param} WHERE id = {self.param}"

    @property
    def set_default_app(self) -> str:
        return f"INSERT INTO meta (k, v) VALUES ('default_app', {self.param})"


def tables_sql(*, integer: str, boolean: str, false: str, real: str, seq: str) -> str:
    """The tables of both stores, created if missing, in a dialect's column types:
    ``integer`` for counts and times, ``boolean`` with its ``false`` default for flags,
    ``real`` for rates, and ``seq``, a column definition line that orders rows as inserted
    (empty where the database has one built in)."""
    return f"""
CREATE TABLE IF NOT EXISTS apps (
    id TEXT PRIMARY KEY,{seq}
    name TEXT NOT NULL,
    suspended {boolean} NOT NULL DEFAULT {false},
    max_connections {integer},
    max_messages_per_period {integer},
    rate_limit {real},
    rate_burst {integer},
    created_at {integer} NOT NULL
);
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,{seq}
    app_id TEXT NOT NULL REFERENCES apps(id),
    kind TEXT NOT NULL CHECK (kind IN ('publishable', 'secret')),
    secret TEXT,
    name TEXT NOT NULL DEFAULT '',
    channel_patterns TEXT NOT NULL,
    actions TEXT NOT NULL,
    allowed_origins TEXT NOT NULL DEFAULT '[]',
    revoked {boolean} NOT NULL DEFAULT {false},
    created_at {integer} NOT NULL,
    peer_id_pattern TEXT
);
CREATE INDEX IF NOT EXISTS keys_app ON keys(app_id);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS usage (
    app_id TEXT NOT NULL,
    period_start {integer} NOT NULL,
    period_end {integer} NOT NULL,
    messages {integer} NOT NULL DEFAULT 0,
    peak_connections {integer} NOT NULL DEFAULT 0,
    rejected_messages {integer} NOT NULL DEFAULT 0,
    refused_connections {integer} NOT NULL DEFAULT 0,
    PRIMARY KEY (app_id, period_start)
);
CREATE TABLE IF NOT EXISTS webhooks (
    id TEXT PRIMARY KEY,{seq}
    app_id TEXT NOT NULL REFERENCES apps(id),
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    channel_patterns TEXT NOT NULL,
    secret TEXT NOT NULL,
    enabled {boolean} NOT NULL DEFAULT TRUE,
    created_at {integer} NOT NULL
);
"""


WEBHOOK_COLUMNS = "id, app_id, url, events, channel_patterns, secret, enabled, created_at"
WEBHOOK_MUTABLE = ("url", "events", "channel_patterns", "secret", "enabled")
#: Endpoints one app may have.
MAX_WEBHOOKS = 10


def new_webhook(app_id: str, url: object, *, events: object = None,
                channel_patterns: object = None, secret: str | None = None) -> Endpoint:
    """A checked endpoint with a fresh id (and a fresh signing secret unless given)."""
    checked = webhook_fields(url=url, events=events if events is not None
                             else sorted(DEFAULT_EVENT_TYPES),
                             channel_patterns=channel_patterns if channel_patterns is not None
                             else ["**"])
    return Endpoint(new_endpoint_id(), app_id, checked["url"], frozenset(checked["events"]),
                    tuple(checked["channel_patterns"]), secret or new_secret(), True, "store",
                    int(time.time()))


def webhook_fields(**given: object) -> dict[str, Any]:
    """Check the endpoint fields given (url, events, channel_patterns, enabled); raises
    ``StoreError`` saying what is wrong."""
    out: dict[str, Any] = {}
    for name, value in given.items():
        if name == "url":
            problem = url_problem(value)
        elif name == "events":
            problem = events_problem(value)
        elif name == "channel_patterns":
            problem = patterns_problem(value)
        elif name == "enabled":
            problem = None if isinstance(value, bool) else "enabled must be true or false"
        else:
            problem = f"unknown webhook field {name!r}"
        if problem:
            raise StoreError(problem)
        out[name] = value
    return out


def webhook_row(e: Endpoint) -> tuple[Any, ...]:
    return (e.id, e.app_id, e.url, json.dumps(sorted(e.events)),
            json.dumps(list(e.channel_patterns)), e.secret, e.enabled, e.created_at)


def webhook_from_row(r: Sequence[Any]) -> Endpoint:
    return Endpoint(r[0], r[1], r[2], frozenset(json.loads(r[3])), tuple(json.loads(r[4])),
                    r[5], bool(r[6]), "store", int(r[7]))


SQLITE = Dialect(param="?", insertion_order="rowid", greatest="MAX")
POSTGRES = Dialect(param="%s", insertion_order="seq", greatest="GREATEST")

DEFAULT_APP_NAME = "default"
DEV_KEY_NAME = "development (all actions)"
DEFAULT_SECRET_KEY_NAME = "default secret"
