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

from ..protocol import CloseCode
from ..protocol import claims as claim_rules
from ..protocol.frames import encode_json
from ..protocol.patterns import covered_by_any, is_pattern, matches_any
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

    def pattern_allowed(self, pattern: str) -> bool:
        """A pattern subscription: every channel the pattern could match must be allowed,
        so the key's patterns and the token's (when it narrows them) must cover it."""
        if not covered_by_any(self.key_patterns, pattern):
            return False
        return self.token_patterns is None or covered_by_any(self.token_patterns, pattern)

    def subscription_allowed(self, channel: str) -> bool:
        """``channel_allowed`` for a channel, ``pattern_allowed`` for a pattern."""
        return self.pattern_allowed(channel) if is_pattern(channel) else (
            self.channel_allowed(channel))


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
    problem = claim_rules.header_problem(header)
    if problem is not None:
        return _fail(problem)
    key = keyring.active_key(header["kid"])
    if key is None or key.kind != SECRET or key.secret is None:
        return _fail("token names an unknown or revoked key")
    gate = _app_gate(keyring, key)
    if isinstance(gate, AuthFailure):
        return gate
    try:
        # The library checks the signature only; every claim rule is in protocol/claims.py,
        # applied below with this call's ``now``.
        claims = jwt.decode(
            token, key.secret.encode("utf-8"), algorithms=[claim_rules.ALGORITHM],
            options={"verify_signature": True, "require": [], "verify_exp": False,
                     "verify_nbf": False, "verify_iat": False, "verify_aud": False,
                     "verify_iss": False, "verify_sub": False, "verify_jti": False})
    except jwt.PyJWTError:
        return _fail("token signature or claims are invalid")

    problem = (claim_rules.missing_claim_problem(claims, allow_non_expiring=allow_non_expiring)
               or claim_rules.timing_problem(claims, now=now, leeway=leeway))
    if problem is not None:
        return _fail(problem)
    if claim_rules.expiry_problem(claims, now=now, leeway=leeway) is not None:
        return AuthFailure(claim_rules.EXPIRED, close_code=CloseCode.TOKEN_EXPIRED)
    sub = claims["sub"]
    exp = claims.get("exp")
    channels = claims.get("channels")
    permissions = claims.get("permissions")
    peer_metadata_claim = claims.get("peerMetadata")
    metadata = claims.get("metadata")
    problem = (
        claim_rules.jti_problem(claims)
        or claim_rules.sub_problem(sub, "token 'sub'", brief=True)
        or claim_rules.signer_problem(key.peer_id_pattern, sub, "token 'sub'", brief=True)
        or claim_rules.exp_problem(exp, now=now, leeway=leeway, max_lifetime=max_lifetime)
        or (None if channels is None
            else claim_rules.channels_problem(channels, "token 'channels'", brief=True))
        or (None if permissions is None
            else claim_rules.permissions_problem(permissions, "token 'permissions'", brief=True))
        or claim_rules.peer_metadata_problem(peer_metadata_claim, "token 'peerMetadata'")
        or claim_rules.metadata_problem(metadata, "token 'metadata'")
    )
    if problem is not None:
        return _fail(problem)

    return Principal(
        app_id=key.app_id,
        key_id=key.id,
        peer_id=sub,
        via_token=True,
        key_patterns=key.channel_patterns,
        token_patterns=None if channels is None else tuple(channels),
        actions=key.actions if permissions is None else key.actions & frozenset(permissions),
        token_actions=None if permissions is None else frozenset(permissions),
        expires_at=None if exp is None else int(exp),
        peer_metadata=None if peer_metadata_claim is None else encode_json(peer_metadata_claim),
        metadata=metadata,
    )


def mint_token(
    key: Key,
    sub: str,
    *,
    ttl: int | None = claim_rules.DEFAULT_TOKEN_TTL,
    channels: list[str] | None = None,
    permissions: list[str] | None = None,
    peer_metadata: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    now: float | None = None,
) -> tuple[str, int | None]:
    """Sign a JWT for ``sub`` with a secret key. Returns the token and its expiry. Raises
    ``ValueError`` for a claim the server would refuse at connect (protocol/claims.py)."""
    if key.kind != SECRET or key.secret is None:
        raise ValueError("tokens are signed with a secret key (sk_id_...)")
    problem = (claim_rules.sub_problem(sub, "sub")
               or claim_rules.signer_problem(key.peer_id_pattern, sub, "sub"))
    if problem is not None:
        raise ValueError(problem)
    claims = claim_rules.token_claims(
        sub, issued=int(time.time() if now is None else now), ttl=ttl, channels=channels,
        permissions=permissions, peer_metadata=peer_metadata, metadata=metadata)
    token = jwt.encode(claims, key.secret.encode("utf-8"), algorithm=claim_rules.ALGORITHM,
                       headers={"kid": key.id, "typ": "JWT"})
    return token, claims.get("exp")
