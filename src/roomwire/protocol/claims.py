"""The rules of a roomwire JWT: its header, which claims it needs, their types and limits.

One source for the three places that deal with tokens: the server's check at connect
(``server/auth.py``), the REST token endpoint (``POST /v1/tokens``) and minting (``mint_token``,
``roomwire token``). Pure: no clock, no key store, no I/O; the caller passes ``now`` and the
signing key's scope (its channel patterns, actions and peer id pattern) as plain values.

Each ``*_problem`` function returns one sentence saying why a value breaks a rule, or None when
it does not (the style of ``validate.py``). ``name`` is how the caller shows the value to its
user: ``token 'channels'`` in a close reason, ``channels`` in a REST answer. ``brief=True`` asks
for the close-reason wording: a close reason holds at most 123 bytes, so it leaves out detail of
unbounded length (an offending pattern is quoted in full otherwise).

docs/protocol.md ("Authentication and JWTs") lists the same rules for people.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

from .codes import ALL_ACTIONS, Action
from .frames import encode_json
from .limits import MAX_METADATA_BYTES, MAX_PEER_ID_BYTES, MAX_PEER_METADATA_BYTES
from .patterns import covered_by_any, matches, pattern_problem
from .validate import channel_problem, is_reserved_channel, peer_id_problem

ALGORITHM = "HS256"
"""The only signature algorithm: tokens are signed with an app's secret key (HMAC)."""

DEFAULT_TOKEN_TTL = 3_600
"""Lifetime of a minted token when none is asked for (REST ``expiresInSec``, ``--ttl``)."""

MAX_TOKEN_CHANNELS = 100
"""Most patterns in a token's ``channels`` claim."""

MAX_REQUEST_PERMISSIONS = 16
"""Most entries in a REST token request's ``permissions`` (the claim itself is not capped:
duplicates are harmless once the token is signed)."""

EXPIRED = "token expired"
"""The sentence of ``expiry_problem``: the one refusal the server answers with 4002, not 4001."""

_ACTION_LIST = ", ".join(Action)


def header_problem(header: Mapping[str, Any]) -> str | None:
    """Why a token's (unverified) header is unusable: HS256 only, and a ``kid`` naming the
    secret key that signed it."""
    if header.get("alg") != ALGORITHM:
        return f"token must be signed with {ALGORITHM}"
    if not isinstance(header.get("kid"), str):
        return "token header has no kid naming a secret key"
    return None


def required_claims(allow_non_expiring: bool) -> tuple[str, ...]:
    """The claims a token must carry: ``sub`` always, ``exp`` unless the server allows
    tokens that never expire."""
    return ("sub",) if allow_non_expiring else ("sub", "exp")


def missing_claim_problem(claims: Mapping[str, Any], *, allow_non_expiring: bool) -> str | None:
    """A required claim that is absent or null."""
    for claim in required_claims(allow_non_expiring):
        if claims.get(claim) is None:
            return f"token lacks the {claim!r} claim"
    return None


def _whole_seconds(value: object) -> int | None:
    """A NumericDate claim read as whole seconds, or None when it cannot be read. Lenient on
    purpose (docs/protocol.md): a numeric string or a fraction reads as ``int()`` does, as
    tokens accepted by earlier releases did (``exp`` is held to a JSON number later, by
    ``exp_problem``)."""
    try:
        return int(value)  # type: ignore[call-overload, no-any-return]
    except (ValueError, TypeError, OverflowError):
        return None


def timing_problem(claims: Mapping[str, Any], *, now: float, leeway: float) -> str | None:
    """``iat`` and ``nbf``, when present, must be readable and not later than ``now`` plus
    ``leeway``; ``exp``, when present, must be readable (its expiry is ``expiry_problem``)."""
    for claim in ("iat", "nbf"):
        if claim in claims:
            at = _whole_seconds(claims[claim])
            if at is None:
                return f"token {claim!r} must be a number"
            if at > now + leeway:
                return "token is not valid yet"
    if "exp" in claims and _whole_seconds(claims["exp"]) is None:
        return "token 'exp' must be a number"
    return None


def expiry_problem(claims: Mapping[str, Any], *, now: float, leeway: float) -> str | None:
    """``EXPIRED`` when the token's ``exp`` (in whole seconds) lies ``leeway`` or more in the
    past."""
    if "exp" not in claims:
        return None
    exp = _whole_seconds(claims["exp"])
    if exp is not None and exp <= now - leeway:
        return EXPIRED
    return None


def jti_problem(claims: Mapping[str, Any]) -> str | None:
    """A token id, when present, is a string."""
    if "jti" in claims and not isinstance(claims["jti"], str):
        return "token 'jti' must be a string"
    return None


def sub_problem(value: object, name: str, *, brief: bool = False) -> str | None:
    """The peer id a token is for (``sub``, REST ``peerId``): 1-128 printable ASCII."""
    problem = peer_id_problem(value)
    if problem is None:
        return None
    if brief:
        return f"{name} must be 1-{MAX_PEER_ID_BYTES} printable ASCII characters"
    return f"{name}: {problem}"


def peer_id_allowed(peer_id_pattern: str | None, peer_id: str) -> bool:
    """Whether a secret key with this peer id pattern (None: any) may issue tokens for, or
    kick, ``peer_id``."""
    return peer_id_pattern is None or matches(peer_id_pattern, peer_id)


def signer_problem(peer_id_pattern: str | None, peer_id: str, name: str, *,
                   brief: bool = False) -> str | None:
    """The signing key's peer id pattern must match the token's peer id."""
    if peer_id_allowed(peer_id_pattern, peer_id):
        return None
    if brief:
        return f"{name} is not a peer id its signing key may issue tokens for"
    return f"{name}: this key may only issue tokens for peer ids matching {peer_id_pattern!r}"


def exp_problem(exp: object, *, now: float, leeway: float,
                max_lifetime: float | None) -> str | None:
    """A present ``exp`` is a JSON number no further ahead of ``now`` than ``max_lifetime``
    (plus ``leeway``); None for ``max_lifetime`` puts no cap on it."""
    if exp is None:
        return None
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        # The reader above takes a numeric string, and a string here would otherwise yield a
        # token that never expires: JWT's NumericDate is a JSON number.
        return "token 'exp' must be a number"
    if max_lifetime is not None and exp - now > max_lifetime + leeway:
        # Measured from now, not from 'iat': the signer chooses 'iat' as freely as 'exp'.
        return (f"token 'exp' is more than {int(max_lifetime)} s ahead, this server's "
                "maximum token lifetime")
    return None


def lifetime_problem(seconds: object, name: str, max_seconds: int | None) -> str | None:
    """A requested token lifetime (REST ``expiresInSec``, ``--ttl``): whole seconds from 1 to
    ``max_seconds`` (None: no upper bound)."""
    if (isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 1
            or (max_seconds is not None and seconds > max_seconds)):
        if max_seconds is None:
            return f"{name} must be a whole number of seconds, at least 1"
        return (f"{name} must be a whole number of seconds from 1 to {max_seconds} (this "
                "server's maximum token lifetime)")
    return None


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def channels_problem(value: object, name: str, *, brief: bool = False) -> str | None:
    """A token's ``channels``: a list of at most 100 channel patterns, each within the pattern
    limits every pattern has (key, token or REST)."""
    if not _strings(value):
        return f"{name} must be a list of strings"
    assert isinstance(value, list)
    if len(value) > MAX_TOKEN_CHANNELS:
        if brief:
            return f"{name} has more than {MAX_TOKEN_CHANNELS} entries"
        return f"{name} may list at most {MAX_TOKEN_CHANNELS} patterns"
    for pattern in value:
        problem = pattern_problem(pattern)
        if problem is not None:
            if brief:
                return f"{name} has an invalid, too long or too wild pattern"
            return f"{name} contains an invalid pattern: {problem}"
    return None


def requested_channels_problem(channels: Iterable[str], name: str) -> str | None:
    """What the REST endpoint asks of a requested pattern beyond ``channels_problem``: that
    it reads as a channel name too (no control characters, at most 256 bytes)."""
    for pattern in channels:
        if channel_problem(pattern) is not None:
            return f"{name} contains an invalid channel pattern"
    return None


def reserved_channels_problem(channels: Iterable[str], name: str) -> str | None:
    """A requested pattern on a reserved channel (``_metered/``, ``_internal/``,
    ``_system/``): no token of an app's reaches those."""
    if any(is_reserved_channel(p) for p in channels):
        return f"{name} contains a reserved channel"
    return None


def channels_within_problem(channels: Iterable[str], key_patterns: Iterable[str],
                            name: str) -> str | None:
    """A minted token may only narrow its key: every requested pattern lies within one of the
    key's channel patterns."""
    outer = tuple(key_patterns)
    if not all(covered_by_any(outer, p) for p in channels):
        return f"{name} must be covered by the key's channel patterns"
    return None


def permissions_problem(value: object, name: str, *, brief: bool = False,
                        max_entries: int | None = None) -> str | None:
    """A token's ``permissions``: a list of actions out of publish, subscribe, presence, send
    (``max_entries`` caps its length; the REST endpoint uses ``MAX_REQUEST_PERMISSIONS``)."""
    if not _strings(value):
        return f"{name} must be a list of strings"
    assert isinstance(value, list)
    if max_entries is not None and len(value) > max_entries:
        return f"{name} may list at most {max_entries} actions"
    if not set(value) <= ALL_ACTIONS:
        if brief:
            return f"{name} contains an unknown action"
        return f"{name}: each must be one of {_ACTION_LIST}"
    return None


def permissions_within_problem(permissions: Iterable[str], key_actions: Collection[str],
                               name: str) -> str | None:
    """A minted token may only narrow its key: no action the key lacks."""
    if not set(permissions) <= set(key_actions):
        return f"{name} must be a subset of the key's actions"
    return None


def _object_problem(value: object, name: str, max_bytes: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        return f"{name} must be an object"
    if len(encode_json(value)) > max_bytes:
        return f"{name} is larger than {max_bytes // 1024} KB"
    return None


def peer_metadata_problem(value: object, name: str) -> str | None:
    """``peerMetadata`` (stamped on the peer's presence): a JSON object of at most 4 KB
    encoded, or absent (None)."""
    return _object_problem(value, name, MAX_PEER_METADATA_BYTES)


def metadata_problem(value: object, name: str) -> str | None:
    """``metadata`` (handed to the peer in its welcome): a JSON object of at most 8 KB
    encoded, or absent (None)."""
    return _object_problem(value, name, MAX_METADATA_BYTES)


def token_claims(
    sub: str,
    *,
    issued: int,
    ttl: int | None,
    channels: list[str] | None = None,
    permissions: list[str] | None = None,
    peer_metadata: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The claims of a new token, held to the rules the server checks at connect; raises
    ``ValueError`` with the sentence of the first rule broken. ``ttl`` None: no ``exp``."""
    problem = (
        sub_problem(sub, "sub")
        or (None if ttl is None else lifetime_problem(ttl, "ttl", None))
        or (None if channels is None else channels_problem(channels, "channels"))
        or (None if permissions is None else permissions_problem(permissions, "permissions"))
        or peer_metadata_problem(peer_metadata, "peerMetadata")
        or metadata_problem(metadata, "metadata")
    )
    if problem is not None:
        raise ValueError(problem)
    claims: dict[str, Any] = {"sub": sub, "iat": issued}
    if ttl is not None:
        claims["exp"] = issued + ttl
    if channels is not None:
        claims["channels"] = channels
    if permissions is not None:
        claims["permissions"] = permissions
    if peer_metadata is not None:
        claims["peerMetadata"] = peer_metadata
    if metadata is not None:
        claims["metadata"] = metadata
    return claims
