"""Authentication: publishable keys and HS256 JWTs signed with an app's secret key.

``authenticate`` turns the upgrade request's query and Origin into a ``Principal`` or an
``AuthFailure`` that says how to refuse (an HTTP status at the upgrade, or a close code after
it). Every failure message is safe to show: it never contains a token, key or secret.
"""

from __future__ import annotations

import hmac
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import jwt

from ..protocol import ALL_ACTIONS, CloseCode
from ..protocol.frames import encode_json
from ..protocol.limits import MAX_METADATA_BYTES, MAX_PEER_METADATA_BYTES
from ..protocol.patterns import check_pattern, covered_by_any, matches_any, pattern_problem
from ..protocol.validate import peer_id_problem
from .store import PUBLISHABLE, SECRET, App, Key


@dataclass(frozen=True)
class Principal:
    """Who is on the other end of a connection, and what they may do."""

    app_id: str
    key_id: str
    peer_id: str
    via_token: bool
    key_patterns: tuple[str, ...]
    token_patterns: tuple[str, ...] | None
    actions: frozenset[str]
    expires_at: int | None = None
    peer_metadata: bytes | None = None
    """The JWT's ``peerMetadata`` as encoded JSON, ready to splice into frames."""
    metadata: dict[str, Any] | None = field(default=None)
    token_actions: frozenset[str] | None = None
    """The JWT's ``permissions`` claim, kept to recompute ``actions`` when the key changes."""

    def can(self, action: str) -> bool:
        return action in self.actions

    def with_key(self, key: Key) -> Principal:
        """This principal under the key's current scope (the token's own narrowing kept)."""
        actions = key.actions if self.token_actions is None else key.actions & self.token_actions
        return replace(self, key_patterns=key.channel_patterns, actions=actions)

    def scope_within(self, outer: tuple[str, ...]) -> bool:
        """Whether every channel this principal may use is one ``outer`` allows (either the
        key's patterns or the token's narrowing lie within it; conservative like ``covers``)."""
        if all(covered_by_any(outer, p) for p in self.key_patterns):
            return True
        return self.token_patterns is not None and all(
            covered_by_any(outer, p) for p in self.token_patterns)

    def channel_allowed(self, channel: str) -> bool:
        """The channel must match the key's patterns and, when the token narrows them, the
        token's patterns too (the intersection)."""
        if not matches_any(self.key_patterns, channel):
            return False
        return self.token_patterns is None or matches_any(self.token_patterns, channel)


@dataclass(frozen=True)
class AuthFailure:
    """How to refuse a connection. ``http_status`` set: answer the upgrade with it; else
    upgrade and close with ``close_code``."""

    message: str
    close_code: int = 0
    http_status: int = 0


class Keyring:
    """An in-memory snapshot of apps and keys, rebuilt when the store changes."""

    def __init__(self, apps: Mapping[str, App], keys: Mapping[str, Key]) -> None:
        self.apps = dict(apps)
        self.keys = dict(keys)

    def app(self, app_id: str) -> App | None:
        return self.apps.get(app_id)

    def active_key(self, key_id: str) -> Key | None:
        key = self.keys.get(key_id)
        if key is None or key.revoked:
            return None
        return key

    def secret_key(self, key_id: str, secret: str) -> Key | None:
        """The active secret key with this id, if ``secret`` is its secret (constant time)."""
        key = self.active_key(key_id)
        if key is None or key.kind != SECRET or key.secret is None:
            # Compare anyway so that a miss costs the same as a wrong secret.
            hmac.compare_digest(secret.encode(), b"sk_secret_" + b"0" * 48)
            return None
        if not hmac.compare_digest(secret.encode(), key.secret.encode()):
            return None
        return key


def _origin_allowed(key: Key, origin: str | None) -> bool:
    if origin is None or not key.allowed_origins:
        return True
    return origin.rstrip("/") in {o.rstrip("/") for o in key.allowed_origins}


def authenticate(
    query: Mapping[str, str],
    origin: str | None,
    keyring: Keyring,
    *,
    leeway: float = 5.0,
    allow_non_expiring: bool = False,
    max_lifetime: float | None = None,
    now: float | None = None,
) -> Principal | AuthFailure:
    """Check the credential of an upgrade request. ``max_lifetime``: a token whose ``exp``
    lies further ahead than this many seconds (plus ``leeway``) is refused with 4001."""
    key_param = query.get("key")
    token = query.get("token")
    if (key_param is None) == (token is None):
        return AuthFailure("send exactly one credential: ?key=pk_live_... or ?token=<JWT>",
                           close_code=CloseCode.INVALID_TOKEN)
    if key_param is not None:
        return _publishable(key_param, origin, keyring)
    assert token is not None
    return _token(token, keyring, leeway, allow_non_expiring, max_lifetime,
                  time.time() if now is None else now)


def _app_gate(keyring: Keyring, key: Key) -> App | AuthFailure:
    app = keyring.app(key.app_id)
    if app is None:
        return AuthFailure("unknown credential", close_code=CloseCode.INVALID_TOKEN)
    if app.suspended:
        return AuthFailure("this app is suspended", close_code=CloseCode.ACCOUNT_SUSPENDED)
    return app


def _publishable(key_id: str, origin: str | None, keyring: Keyring) -> Principal | AuthFailure:
    key = keyring.active_key(key_id)
    if key is None or key.kind != PUBLISHABLE:
        return AuthFailure("unknown or revoked publishable key", close_code=CloseCode.INVALID_TOKEN)
    gate = _app_gate(keyring, key)
    if isinstance(gate, AuthFailure):
        return gate
    if not _origin_allowed(key, origin):
        return AuthFailure("origin not allowed for this key", http_status=403)
    return Principal(
        app_id=key.app_id,
        key_id=key.id,
        peer_id=str(uuid.uuid4()),
        via_token=False,
        key_patterns=key.channel_patterns,
        token_patterns=None,
        actions=key.actions,
    )


def _fail(message: str) -> AuthFailure:
    return AuthFailure(message, close_code=CloseCode.INVALID_TOKEN)


def _token(
    token: str, keyring: Keyring, leeway: float, allow_non_expiring: bool,
    max_lifetime: float | None, now: float,
) -> Principal | AuthFailure:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return _fail("malformed token")
    if header.get("alg") != "HS256":
        return _fail("token must be signed with HS256")
    kid = header.get("kid")
    if not isinstance(kid, str):
        return _fail("token header has no kid naming a secret key")
    key = keyring.active_key(kid)
    if key is None or key.kind != SECRET or key.secret is None:
        return _fail("token names an unknown or revoked key")
    gate = _app_gate(keyring, key)
    if isinstance(gate, AuthFailure):
        return gate
    required = ["sub"] if allow_non_expiring else ["sub", "exp"]
    try:
        claims = jwt.decode(
            token,
            key.secret.encode("utf-8"),
            algorithms=["HS256"],
            leeway=leeway,
            options={"require": required, "verify_aud": False},
        )
    except jwt.ExpiredSignatureError:
        return AuthFailure("token expired", close_code=CloseCode.TOKEN_EXPIRED)
    except jwt.ImmatureSignatureError:
        return _fail("token is not valid yet")
    except jwt.MissingRequiredClaimError as exc:
        return _fail(f"token lacks the {exc.claim!r} claim")
    except jwt.PyJWTError:
        return _fail("token signature or claims are invalid")

    sub = claims.get("sub")
    if not isinstance(sub, str) or peer_id_problem(sub) is not None:
        return _fail("token 'sub' must be 1-128 printable ASCII characters")
    if not key.may_act_for(sub):
        return _fail("token 'sub' is not a peer id its signing key may issue tokens for")
    exp = claims.get("exp")
    if exp is not None and (not isinstance(exp, int | float) or isinstance(exp, bool)):
        # PyJWT accepts a numeric string; JWT's NumericDate is a JSON number, and a string
        # here would otherwise yield a token that never expires.
        return _fail("token 'exp' must be a number")
    if exp is not None and max_lifetime is not None and exp - now > max_lifetime + leeway:
        # Measured from now, not from 'iat': the signer chooses 'iat' as freely as 'exp'.
        return _fail(f"token 'exp' is more than {int(max_lifetime)} s ahead, this server's "
                     "maximum token lifetime")
    expires_at = int(exp) if exp is not None else None

    token_patterns: tuple[str, ...] | None = None
    channels = claims.get("channels")
    if channels is not None:
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            return _fail("token 'channels' must be a list of strings")
        if len(channels) > 100:
            return _fail("token 'channels' has more than 100 entries")
        for c in channels:
            if pattern_problem(c) is not None:
                # Close reasons are short (123 bytes): the limits are in docs/operations.md.
                return _fail("token 'channels' has an invalid, too long or too wild pattern")
        token_patterns = tuple(channels)

    actions = key.actions
    permissions = claims.get("permissions")
    if permissions is not None:
        if not isinstance(permissions, list) or not all(isinstance(p, str) for p in permissions):
            return _fail("token 'permissions' must be a list of strings")
        if not set(permissions) <= ALL_ACTIONS:
            return _fail("token 'permissions' contains an unknown action")
        actions = key.actions & frozenset(permissions)

    peer_metadata: bytes | None = None
    if "peerMetadata" in claims and claims["peerMetadata"] is not None:
        pm = claims["peerMetadata"]
        if not isinstance(pm, dict):
            return _fail("token 'peerMetadata' must be an object")
        peer_metadata = encode_json(pm)
        if len(peer_metadata) > MAX_PEER_METADATA_BYTES:
            return _fail("token 'peerMetadata' is larger than 4 KB")
    metadata: dict[str, Any] | None = None
    if "metadata" in claims and claims["metadata"] is not None:
        md = claims["metadata"]
        if not isinstance(md, dict):
            return _fail("token 'metadata' must be an object")
        if len(encode_json(md)) > MAX_METADATA_BYTES:
            return _fail("token 'metadata' is larger than 8 KB")
        metadata = md

    return Principal(
        app_id=key.app_id,
        key_id=key.id,
        peer_id=sub,
        via_token=True,
        key_patterns=key.channel_patterns,
        token_patterns=token_patterns,
        actions=actions,
        token_actions=None if permissions is None else frozenset(permissions),
        expires_at=expires_at,
        peer_metadata=peer_metadata,
        metadata=metadata,
    )


def mint_token(
    key: Key,
    sub: str,
    *,
    ttl: int | None = 3600,
    channels: list[str] | None = None,
    permissions: list[str] | None = None,
    peer_metadata: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    now: float | None = None,
) -> tuple[str, int | None]:
    """Sign a JWT for ``sub`` with a secret key. Returns the token and its expiry."""
    if key.kind != SECRET or key.secret is None:
        raise ValueError("tokens are signed with a secret key (sk_id_...)")
    problem = peer_id_problem(sub)
    if problem:
        raise ValueError(f"sub: {problem}")
    if not key.may_act_for(sub):
        raise ValueError(f"sub: this key may only issue tokens for peer ids matching "
                         f"{key.peer_id_pattern!r}")
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"sub": sub, "iat": issued}
    exp: int | None = None
    if ttl is not None:
        if ttl <= 0:
            raise ValueError("ttl must be a positive number of seconds")
        exp = issued + int(ttl)
        claims["exp"] = exp
    if channels is not None:
        for c in channels:
            check_pattern(c)
        claims["channels"] = channels
    if permissions is not None:
        unknown = set(permissions) - ALL_ACTIONS
        if unknown:
            raise ValueError(f"unknown permission(s): {sorted(unknown)}")
        claims["permissions"] = permissions
    if peer_metadata is not None:
        if len(encode_json(peer_metadata)) > MAX_PEER_METADATA_BYTES:
            raise ValueError("peer metadata is larger than 4 KB")
        claims["peerMetadata"] = peer_metadata
    if metadata is not None:
        if len(encode_json(metadata)) > MAX_METADATA_BYTES:
            raise ValueError("metadata is larger than 8 KB")
        claims["metadata"] = metadata
    token = jwt.encode(claims, key.secret.encode("utf-8"), algorithm="HS256",
                       headers={"kid": key.id, "typ": "JWT"})
    return token, exp
