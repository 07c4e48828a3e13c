"""Apps and keys, kept in SQLite (the single-node default).

The CLI and a running node share one database file; the node notices changes through
SQLite's ``data_version`` and reloads (see ``Keyring``).
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..protocol import ALL_ACTIONS
from ..protocol.patterns import matches, pattern_problem

PUBLISHABLE = "publishable"
SECRET = "secret"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS apps (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    suspended INTEGER NOT NULL DEFAULT 0,
    max_connections INTEGER,
    max_messages_per_period INTEGER,
    rate_limit REAL,
    rate_burst INTEGER,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL REFERENCES apps(id),
    kind TEXT NOT NULL CHECK (kind IN ('publishable', 'secret')),
    secret TEXT,
    name TEXT NOT NULL DEFAULT '',
    channel_patterns TEXT NOT NULL,
    actions TEXT NOT NULL,
    allowed_origins TEXT NOT NULL DEFAULT '[]',
    revoked INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    peer_id_pattern TEXT
);
CREATE INDEX IF NOT EXISTS keys_app ON keys(app_id);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS usage (
    app_id TEXT NOT NULL,
    period_start INTEGER NOT NULL,
    period_end INTEGER NOT NULL,
    messages INTEGER NOT NULL DEFAULT 0,
    peak_connections INTEGER NOT NULL DEFAULT 0,
    rejected_messages INTEGER NOT NULL DEFAULT 0,
    refused_connections INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (app_id, period_start)
);
"""


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
        return self.peer_id_pattern is None or matches(self.peer_id_pattern, peer_id)

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


class Store:
    """SQLite-backed store of apps and keys. Safe to open from several processes."""

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

    def close(self) -> None:
        self._db.close()

    def data_version(self) -> int:
        """Changes whenever another connection commits to the database."""
        row = self._db.execute("PRAGMA data_version").fetchone()
        return int(row[0])

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
        self._db.execute(
            "INSERT INTO apps (id, name, suspended, max_connections, max_messages_per_period,"
            " rate_limit, rate_burst, created_at) VALUES (?, ?, 0, ?, ?, ?, ?, ?)",
            app_row(app),
        )
        return app

    def list_apps(self) -> list[App]:
        rows = self._db.execute(
            "SELECT id, name, suspended, max_connections, max_messages_per_period, rate_limit,"
            " rate_burst, created_at FROM apps ORDER BY rowid"
        ).fetchall()
        return [_app(r) for r in rows]

    def get_app(self, app_id: str) -> App:
        row = self._db.execute(
            "SELECT id, name, suspended, max_connections, max_messages_per_period, rate_limit,"
            " rate_burst, created_at FROM apps WHERE id = ?",
            (app_id,),
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no app with id {app_id!r}")
        return _app(row)

    def set_suspended(self, app_id: str, suspended: bool) -> App:
        self.get_app(app_id)
        self._db.execute("UPDATE apps SET suspended = ? WHERE id = ?", (int(suspended), app_id))
        return self.get_app(app_id)

    def update_limits(self, app_id: str, **limits: Any) -> App:
        """Set any of max_connections, max_messages_per_period, rate_limit, rate_burst.
        A value of None clears that limit."""
        for k, v in checked_limits(self.get_app(app_id), limits).items():
            self._db.execute(f"UPDATE apps SET {k} = ? WHERE id = ?", (v, app_id))
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
        count = self._db.execute(
            "SELECT COUNT(*) FROM keys WHERE app_id = ? AND revoked = 0", (app_id,)
        ).fetchone()[0]
        if count >= MAX_ACTIVE_KEYS:
            raise StoreError(f"an app can have at most {MAX_ACTIVE_KEYS} active keys; "
                             "revoke one first")
        self._db.execute(
            "INSERT INTO keys (id, app_id, kind, secret, name, channel_patterns, actions,"
            " allowed_origins, revoked, created_at, peer_id_pattern)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
            key_row(key),
        )
        return key

    def list_keys(self, app_id: str | None = None, *, include_revoked: bool = True) -> list[Key]:
        sql = (
            "SELECT id, app_id, kind, secret, name, channel_patterns, actions, allowed_origins,"
            " revoked, created_at, peer_id_pattern FROM keys"
        )
        clauses, args = [], []
        if app_id is not None:
            clauses.append("app_id = ?")
            args.append(app_id)
        if not include_revoked:
            clauses.append("revoked = 0")
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY rowid"
        return [_key(r) for r in self._db.execute(sql, args).fetchall()]

    def get_key(self, key_id: str) -> Key:
        row = self._db.execute(
            "SELECT id, app_id, kind, secret, name, channel_patterns, actions, allowed_origins,"
            " revoked, created_at, peer_id_pattern FROM keys WHERE id = ?",
            (key_id,),
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no key with id {key_id!r}")
        return _key(row)

    def revoke_key(self, key_id: str) -> Key:
        self.get_key(key_id)
        self._db.execute("UPDATE keys SET revoked = 1 WHERE id = ?", (key_id,))
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
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for column, value in updates:
                    self._db.execute(f"UPDATE keys SET {column} = ? WHERE id = ?",
                                     (value, key_id))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return self.get_key(key_id)

    # -- usage -------------------------------------------------------------------------------

    def save_usage(self, rows: Iterable[UsageRow]) -> None:
        """Write usage counters (one transaction; the counters only grow within a period)."""
        batch = list(rows)
        if not batch:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                "INSERT INTO usage (app_id, period_start, period_end, messages, peak_connections,"
                " rejected_messages, refused_connections) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (app_id, period_start) DO UPDATE SET"
                " period_end = excluded.period_end,"
                " messages = MAX(messages, excluded.messages),"
                " peak_connections = MAX(peak_connections, excluded.peak_connections),"
                " rejected_messages = MAX(rejected_messages, excluded.rejected_messages),"
                " refused_connections = MAX(refused_connections, excluded.refused_connections)",
                [(r.app_id, r.period_start, r.period_end, r.messages, r.peak_connections,
                  r.rejected_messages, r.refused_connections) for r in batch],
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def load_usage(self, period_start: int | None = None) -> list[UsageRow]:
        """Stored usage rows, optionally only those of the period starting at ``period_start``."""
        sql = ("SELECT app_id, period_start, period_end, messages, peak_connections,"
               " rejected_messages, refused_connections FROM usage")
        args: list[Any] = []
        if period_start is not None:
            sql += " WHERE period_start = ?"
            args.append(period_start)
        return [UsageRow(*r) for r in self._db.execute(sql, args).fetchall()]

    # -- first start ---------------------------------------------------------------------------

    def ensure_default_app(self) -> tuple[App, list[Key], bool]:
        """Create the default app with a development publishable key (all four actions) and a
        secret key on first start. Returns the app, its active keys, and whether it was new."""
        row = self._db.execute("SELECT v FROM meta WHERE k = 'default_app'").fetchone()
        if row is not None:
            app = self.get_app(row[0])
            return app, self.list_keys(app.id, include_revoked=False), False
        self._db.execute("BEGIN IMMEDIATE")
        try:
            row = self._db.execute("SELECT v FROM meta WHERE k = 'default_app'").fetchone()
            if row is not None:
                self._db.execute("COMMIT")
                app = self.get_app(row[0])
                return app, self.list_keys(app.id, include_revoked=False), False
            app = self.create_app("default")
            pk = self.create_key(app.id, PUBLISHABLE, actions=ALL_ACTIONS,
                                 name="development (all actions)")
            sk = self.create_key(app.id, SECRET, name="default secret")
            self._db.execute("INSERT INTO meta (k, v) VALUES ('default_app', ?)", (app.id,))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return app, [pk, sk], True


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


def _app(r: tuple[Any, ...]) -> App:
    return App(
        id=r[0], name=r[1], suspended=bool(r[2]), max_connections=r[3],
        max_messages_per_period=r[4], rate_limit=r[5], rate_burst=r[6], created_at=r[7],
    )


def _key(r: tuple[Any, ...]) -> Key:
    return Key(
        id=r[0], app_id=r[1], kind=r[2], secret=r[3], name=r[4],
        channel_patterns=tuple(json.loads(r[5])), actions=frozenset(json.loads(r[6])),
        allowed_origins=tuple(json.loads(r[7])), revoked=bool(r[8]), created_at=r[9],
        peer_id_pattern=r[10] if len(r) > 10 else None,
    )
