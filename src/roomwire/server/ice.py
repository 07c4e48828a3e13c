"""ICE servers for the welcome: a static list and TURN credentials minted per connection.

The TURN credentials follow the "TURN REST API" scheme that coturn implements with
``use-auth-secret`` / ``static-auth-secret``: the username is ``<expiry unix seconds>:<peerId>``
and the credential is ``base64(HMAC-SHA1(secret, username))``. coturn accepts the pair until the
expiry passes, without any call back to roomwire.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Sequence
from typing import Any

from ..protocol.ice import turn_username
from ..protocol.limits import MAX_ICE_CREDENTIAL_CHARS, MAX_ICE_SERVERS, MAX_ICE_URL_CHARS

DEFAULT_TTL = 86_400
MAX_TTL = 86_400
"""No TURN credential lives longer: coturn checks it without asking roomwire, so revoking the
key or kicking the peer cannot end it, and this bounds how long it outlives them."""
_SCHEMES = ("stun:", "stuns:", "turn:", "turns:")


def turn_credential(secret: str, username: str) -> str:
    """``base64(HMAC-SHA1(secret, username))``, as coturn computes it."""
    digest = hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def mint_turn(
    urls: Sequence[str],
    secret: str,
    peer_id: str,
    *,
    ttl: int = 0,
    token_expires_at: int | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """One ICE server entry with fresh credentials for ``peer_id``.

    ``ttl`` > 0 fixes the lifetime; 0 uses the token's expiry (``token_expires_at``) or, for a
    credential without one (a publishable key), ``DEFAULT_TTL``. Never more than ``MAX_TTL``.
    """
    issued = int(time.time() if now is None else now)
    if ttl > 0:
        expiry = issued + ttl
    elif token_expires_at is not None and token_expires_at > issued:
        expiry = int(token_expires_at)
    else:
        expiry = issued + DEFAULT_TTL
    expiry = min(expiry, issued + MAX_TTL)
    username = turn_username(expiry, peer_id)
    return {"urls": list(urls), "username": username,
            "credential": turn_credential(secret, username)}


def ice_problem(servers: object) -> str | None:
    """Why the official clients would drop ``servers`` (docs/protocol.md, ICE servers), or None."""
    if not isinstance(servers, list):
        return "ice_servers must be a list"
    if len(servers) > MAX_ICE_SERVERS:
        return f"at most {MAX_ICE_SERVERS} ICE servers"
    for i, entry in enumerate(servers):
        if not isinstance(entry, dict):
            return f"ice_servers[{i}] must be an object"
        urls = entry.get("urls")
        url_list = [urls] if isinstance(urls, str) else urls
        if not isinstance(url_list, list) or not url_list:
            return f"ice_servers[{i}].urls must be a string or a non-empty list of strings"
        for url in url_list:
            if not isinstance(url, str) or not url or len(url) > MAX_ICE_URL_CHARS:
                return f"ice_servers[{i}].urls has an empty or too long URL"
            if not url.lower().startswith(_SCHEMES):
                return f"ice_servers[{i}].urls: scheme must be stun:, stuns:, turn: or turns:"
        for name in ("username", "credential"):
            value = entry.get(name)
            if value is not None and (not isinstance(value, str)
                                      or len(value) > MAX_ICE_CREDENTIAL_CHARS):
                return f"ice_servers[{i}].{name} must be a string of at most 1024 characters"
    return None


class IceProvider:
    """What a node puts in ``welcome.metadata.iceServers``."""

    def __init__(
        self,
        static: Sequence[dict[str, Any]] = (),
        turn_urls: Sequence[str] = (),
        turn_secret: str | None = None,
        turn_ttl: int = 0,
    ) -> None:
        static_list = [dict(s) for s in static]
        problem = ice_problem(static_list)
        if problem is None and turn_urls:
            problem = ice_problem([{"urls": list(turn_urls)}])
        if problem is not None:
            raise ValueError(problem)
        if len(static_list) + (1 if turn_urls else 0) > MAX_ICE_SERVERS:
            raise ValueError(f"at most {MAX_ICE_SERVERS} ICE servers in all")
        self.static = static_list
        self.turn_urls = list(turn_urls)
        self.turn_secret = turn_secret
        self.turn_ttl = turn_ttl

    @property
    def enabled(self) -> bool:
        return bool(self.static) or bool(self.turn_urls and self.turn_secret)

    def servers_for(
        self, peer_id: str, token_expires_at: int | None, now: float | None = None
    ) -> list[dict[str, Any]] | None:
        if not self.enabled:
            return None
        out = [dict(s) for s in self.static]
        if self.turn_urls and self.turn_secret:
            out.append(mint_turn(self.turn_urls, self.turn_secret, peer_id, ttl=self.turn_ttl,
                                 token_expires_at=token_expires_at, now=now))
        return out
