"""Checking roomwire's webhook requests on the receiving side (your backend).

Every webhook request carries ``Roomwire-Signature: t=<unix seconds>,v1=<hex>``, where the hex
is HMAC-SHA256, keyed with the endpoint's signing secret, over ``<t>.`` followed by the raw
request body. ``verify`` recomputes it, compares in constant time, and refuses a timestamp
further than ``tolerance`` seconds from now, so a recorded request cannot be replayed later.
While a secret is being rotated the header may carry several ``v1=`` values; one match is
enough. ``docs/webhook-test-vectors.json`` holds fixed inputs and the header they give, for
checking an implementation in another language.

    from roomwire.webhooks import verify, WebhookSignatureError

    try:
        verify(await request.read(), request.headers, SECRET)
    except WebhookSignatureError as exc:
        return web.json_response({"error": exc.code}, status=400)
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

__all__ = [
    "DEFAULT_TOLERANCE",
    "SIGNATURE_HEADER",
    "WebhookSignatureError",
    "sign",
    "signature_header",
    "verify",
]

SIGNATURE_HEADER = "Roomwire-Signature"
#: Seconds a request's timestamp may differ from the receiver's clock.
DEFAULT_TOLERANCE = 300
# A header longer than this is not something roomwire sent; refuse before parsing it.
_MAX_HEADER = 4096


class WebhookSignatureError(ValueError):
    """A webhook request is not authentic or not fresh. ``code`` is one of ``missing``,
    ``malformed``, ``stale`` (timestamp outside the tolerance: a replay or a skewed clock) and
    ``mismatch`` (forged, altered, or signed with another secret)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def sign(body: bytes, secret: str | bytes, timestamp: int) -> str:
    """The hex HMAC-SHA256 of ``<timestamp>.<body>`` under ``secret``."""
    mac = hmac.new(_key(secret), str(int(timestamp)).encode() + b"." + body, hashlib.sha256)
    return mac.hexdigest()


def signature_header(body: bytes, secrets: list[str] | tuple[str, ...] | str,
                     timestamp: int) -> str:
    """The value of the ``Roomwire-Signature`` header: one ``v1=`` per secret."""
    keys = [secrets] if isinstance(secrets, str) else list(secrets)
    parts = [f"t={int(timestamp)}"] + [f"v1={sign(body, k, timestamp)}" for k in keys]
    return ",".join(parts)


def _header(headers: Mapping[str, str]) -> str | None:
    value = headers.get(SIGNATURE_HEADER)
    if value is not None:
        return value
    wanted = SIGNATURE_HEADER.lower()
    for name, v in headers.items():
        if name.lower() == wanted:
            return v
    return None


def verify(body: bytes, headers: Mapping[str, str], secret: str | bytes, *,
           tolerance: float = DEFAULT_TOLERANCE, now: float | None = None) -> int:
    """Check a webhook request; returns its signed timestamp.

    ``body``: the raw bytes as received (not re-encoded JSON). ``headers``: any mapping (header
    names are matched case-insensitively). Raises ``WebhookSignatureError`` when the header is
    missing or malformed, its timestamp is more than ``tolerance`` seconds away from ``now``
    (default: the clock), or no signature in it matches."""
    raw = _header(headers)
    if raw is None:
        raise WebhookSignatureError("missing", f"the request has no {SIGNATURE_HEADER} header")
    if len(raw) > _MAX_HEADER or not raw.isascii():
        raise WebhookSignatureError("malformed", f"the {SIGNATURE_HEADER} header is malformed")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in raw.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            raise WebhookSignatureError("malformed",
                                        f"the {SIGNATURE_HEADER} header is malformed")
        if name == "t":
            if timestamp is not None or not value.isdigit() or len(value) > 12:
                raise WebhookSignatureError("malformed",
                                            f"the {SIGNATURE_HEADER} timestamp is malformed")
            timestamp = int(value)
        elif name == "v1":
            candidates.append(value)
        # Other schemes are ignored, so a later one can be added next to v1.
    if timestamp is None or not candidates:
        raise WebhookSignatureError(
            "malformed", f"the {SIGNATURE_HEADER} header needs a t= and a v1= part")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookSignatureError(
            "stale", f"the signature's timestamp is {abs(current - timestamp):.0f} s away from "
            f"now (more than {tolerance:g} s): a replayed request or a wrong clock")
    expected = sign(body, secret, timestamp)
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise WebhookSignatureError(
            "mismatch", "the signature does not match the body: forged, altered, or signed "
            "with another secret")
    return timestamp
