"""Operator actions on apps and keys: the one code path behind the admin API and the CLI.

``AdminOps(store)`` works on the database alone (the CLI: a running node notices the change
through SQLite's ``data_version`` within ``store_poll_interval`` and closes the affected
sockets). ``AdminOps(store, live)`` also applies the change to a running node at once (the
admin API), and adds its live stats and usage to the answers.
Every method validates its input and raises ``StoreError`` (``NotFoundError`` for an unknown
app or key) with a message that is safe to show; results are JSON-ready dicts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ..hub import Hub
from ..limits import UsageMeter
from ..store import PUBLISHABLE, SECRET, Store, StoreError
from ..store.usage import usage_document
from ..webhooks.policy import Network, url_problem


class LiveNode(Protocol):
    """A running node, as operator actions see it."""

    @property
    def hub(self) -> Hub: ...

    @property
    def usage(self) -> UsageMeter: ...

    def reload_keyring(self) -> None:
        """Read apps and keys again and apply the changes to open sockets."""
        ...

#: admin API / JSON field name -> store column, for app limits.
LIMIT_FIELDS: dict[str, str] = {
    "maxConnections": "max_connections",
    "maxMessagesPerPeriod": "max_messages_per_period",
    "rateLimit": "rate_limit",
    "rateBurst": "rate_burst",
}
_INT_LIMITS = {"max_connections", "max_messages_per_period", "rate_burst"}
_MAX_INT = 2**62


def _limit_value(column: str, value: object) -> int | float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise StoreError(f"{column} must be a number or null")
    if column in _INT_LIMITS:
        if isinstance(value, float) and not value.is_integer():
            raise StoreError(f"{column} must be a whole number or null")
        value = int(value)
        if abs(value) > _MAX_INT:
            raise StoreError(f"{column} is too large")
        return value
    fvalue = float(value)
    if fvalue != fvalue or fvalue in (float("inf"), float("-inf")) or fvalue > 1e9:
        raise StoreError(f"{column} must be a finite number up to 1e9")
    return fvalue


def parse_limits(body: Mapping[str, object]) -> dict[str, int | float | None]:
    """Limits from a JSON object with camelCase names (absent: unchanged, null: cleared)."""
    out: dict[str, int | float | None] = {}
    for name, column in LIMIT_FIELDS.items():
        if name in body:
            out[column] = _limit_value(column, body[name])
    return out


def _str_list(value: object, what: str, max_items: int = 100) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise StoreError(f"{what} must be a list of strings")
    if len(value) > max_items:
        raise StoreError(f"{what} has more than {max_items} entries")
    if any(len(v) > 512 for v in value):
        raise StoreError(f"{what} has an entry longer than 512 characters")
    return list(value)


class AdminOps:
    """Apps and keys, for the operator."""

    def __init__(self, store: Store, live: LiveNode | None = None) -> None:
        self.store = store
        self.live = live

    def _applied(self) -> None:
        if self.live is not None:
            self.live.reload_keyring()

    # -- apps ----------------------------------------------------------------------------------

    def create_app(self, name: object, limits: Mapping[str, object] | None = None,
                   ) -> dict[str, Any]:
        if not isinstance(name, str):
            raise StoreError("an app name must be a string of 1 to 200 characters")
        parsed = parse_limits(limits or {})
        app = self.store.create_app(name, **parsed)  # type: ignore[arg-type]
        self._applied()
        return self.app_info(app.id)

    def list_apps(self) -> list[dict[str, Any]]:
        return [self.app_info(a.id) for a in self.store.list_apps()]

    def app_info(self, app_id: str) -> dict[str, Any]:
        """The app's settings, plus live stats and usage when a node is attached."""
        app = self.store.get_app(app_id)
        out = app.public()
        if self.live is not None:
            out["stats"] = self.live.hub.stats(app.id)
            out["usage"] = usage_document(app, self.live.usage, self.live.hub)
        return out

    def update_limits(self, app_id: str, limits: Mapping[str, object]) -> dict[str, Any]:
        parsed = parse_limits(limits)
        unknown = set(limits) - set(LIMIT_FIELDS)
        if unknown:
            raise StoreError(f"unknown field(s): {sorted(unknown)[:5]}")
        self.store.update_limits(app_id, **parsed)
        self._applied()
        return self.app_info(app_id)

    def set_suspended(self, app_id: str, suspended: bool) -> dict[str, Any]:
        """Suspending closes the app's sockets with 4012 and refuses new ones with 4012."""
        self.store.set_suspended(app_id, suspended)
        self._applied()
        return self.app_info(app_id)

    def stats(self, app_id: str) -> dict[str, int]:
        self.store.get_app(app_id)
        if self.live is None:
            raise StoreError("live stats need a running node (use the admin API)")
        return self.live.hub.stats(app_id)

    # -- keys ----------------------------------------------------------------------------------

    def create_key(
        self,
        app_id: str,
        kind: object,
        *,
        channel_patterns: object = None,
        actions: object = None,
        allowed_origins: object = None,
        name: object = "",
        peer_id_pattern: object = None,
    ) -> dict[str, Any]:
        """A new key; the result carries the secret of a secret key (shown once).
        ``peer_id_pattern`` (secret keys): the peer ids it may mint tokens for and kick."""
        if kind not in (PUBLISHABLE, SECRET):
            raise StoreError("a key kind is 'publishable' or 'secret'")
        assert isinstance(kind, str)
        if not isinstance(name, str) or len(name) > 200:
            raise StoreError("a key name must be a string of at most 200 characters")
        patterns = (["**"] if channel_patterns is None
                    else _str_list(channel_patterns, "channelPatterns"))
        acts = None if actions is None else _str_list(actions, "actions", 4)
        origins = [] if allowed_origins is None else _str_list(allowed_origins, "allowedOrigins")
        if peer_id_pattern is not None and not isinstance(peer_id_pattern, str):
            raise StoreError("peerIdPattern must be a string pattern or null")
        key = self.store.create_key(app_id, kind, channel_patterns=patterns, actions=acts,
                                    allowed_origins=origins, name=name,
                                    peer_id_pattern=peer_id_pattern)
        self._applied()
        return key.public(include_secret=True)

    def list_keys(self, app_id: str | None = None, *, show_secrets: bool = False,
                  ) -> list[dict[str, Any]]:
        if app_id is not None:
            self.store.get_app(app_id)
        return [k.public(include_secret=show_secrets) for k in self.store.list_keys(app_id)]

    def get_key(self, key_id: str) -> dict[str, Any]:
        return self.store.get_key(key_id).public()

    def revoke_key(self, key_id: str) -> dict[str, Any]:
        """Revoking closes the key's sockets (and its tokens' sockets) with 4001."""
        key = self.store.revoke_key(key_id)
        self._applied()
        return key.public()

    def update_key_scope(
        self,
        key_id: str,
        *,
        channel_patterns: object = None,
        actions: object = None,
        allowed_origins: object = None,
    ) -> dict[str, Any]:
        """Narrowing closes sockets subscribed to channels no longer covered with 4003."""
        key = self.store.update_key_scope(
            key_id,
            channel_patterns=(None if channel_patterns is None
                              else _str_list(channel_patterns, "channelPatterns")),
            actions=None if actions is None else _str_list(actions, "actions", 4),
            allowed_origins=(None if allowed_origins is None
                             else _str_list(allowed_origins, "allowedOrigins")),
        )
        self._applied()
        return key.public()


class WebhookOps:
    """Webhook endpoints, for the operator (admin API and ``roomwire webhooks``). URLs on
    private, loopback or link-local addresses are refused unless ``allowed`` (the config's
    ``webhook_allowed_networks``) contains them."""

    def __init__(self, store: Store, live: LiveNode | None = None,
                 allowed: Sequence[Network] = ()) -> None:
        self.store = store
        self.live = live
        self.allowed = tuple(allowed)

    def _applied(self) -> None:
        if self.live is not None:
            self.live.reload_keyring()

    def _check_url(self, url: object) -> None:
        problem = url_problem(url, self.allowed)
        if problem:
            raise StoreError(problem)

    def create(self, app_id: str, url: object, *, events: object = None,
               channel_patterns: object = None) -> dict[str, Any]:
        """A new endpoint; the result carries its signing secret (shown once)."""
        self._check_url(url)
        endpoint = self.store.create_webhook(app_id, url, events=events,
                                             channel_patterns=channel_patterns)
        self._applied()
        return endpoint.public(include_secret=True)

    def list(self, app_id: str | None = None) -> list[dict[str, Any]]:
        if app_id is not None:
            self.store.get_app(app_id)
        return [e.public() for e in self.store.list_webhooks(app_id)]

    def get(self, webhook_id: str) -> dict[str, Any]:
        return self.store.get_webhook(webhook_id).public()

    def update(self, webhook_id: str, body: Mapping[str, object]) -> dict[str, Any]:
        """``body``: any of url, events, channelPatterns, enabled, rotateSecret (a new secret
        is in the result then)."""
        names = {"url": "url", "events": "events", "channelPatterns": "channel_patterns",
                 "enabled": "enabled"}
        unknown = set(body) - set(names) - {"rotateSecret"}
        if unknown:
            raise StoreError(f"unknown field(s): {sorted(unknown)[:5]}")
        if "url" in body:
            self._check_url(body["url"])
        rotate = body.get("rotateSecret", False)
        if not isinstance(rotate, bool):
            raise StoreError("rotateSecret must be true or false")
        fields = {names[k]: v for k, v in body.items() if k in names}
        endpoint = self.store.update_webhook(webhook_id, rotate_secret=rotate, **fields)
        self._applied()
        return endpoint.public(include_secret=rotate)

    def delete(self, webhook_id: str) -> dict[str, Any]:
        """Removes the endpoint; its undelivered events are dropped (and counted)."""
        endpoint = self.store.delete_webhook(webhook_id)
        self._applied()
        return {**endpoint.public(), "deleted": True}
