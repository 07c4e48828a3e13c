"""The server URL: validated once at construction, credentials added per connect."""

from __future__ import annotations

import ipaddress
from urllib.parse import quote, urlsplit

__all__ = ["LOOPBACK_HOSTS", "connect_url", "endpoint_url"]

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

#: The hosted Metered service, the official SDKs' default; point ``url`` at a roomwire server.
DEFAULT_URL = "wss://rms.metered.ca"
"""Hosts for which a plain ``ws://`` URL is accepted."""

_PATH = "/v1"


def endpoint_url(url: str) -> str:
    """Validate a server base URL and return its WebSocket endpoint (``.../v1``).

    Accepted: ``wss://host[:port]``, or ``ws://`` when the host is ``localhost``,
    ``127.0.0.1`` or ``::1``; an optional trailing ``/``. Refused (ValueError): any other path,
    a query, a fragment, user info, a missing host or a bad port.
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a string, not {type(url).__name__}")
    text = url.strip()
    if not text:
        raise ValueError("url must not be empty")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"url is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss"):
        raise ValueError("url must start with wss:// (or ws:// for localhost)")
    if "@" in parts.netloc:
        raise ValueError("url must not contain user info (credentials go in api_key or "
                         "token_provider)")
    host = parts.hostname
    if not host:
        raise ValueError("url has no host")
    if scheme == "ws" and host not in LOOPBACK_HOSTS:
        raise ValueError("plain ws:// is only allowed for localhost, 127.0.0.1 and ::1; "
                         "use wss://")
    if parts.path not in ("", "/"):
        raise ValueError(f"url must not have a path (got {parts.path!r}); /v1 is added for you")
    if parts.query or "?" in text:
        raise ValueError("url must not have a query string")
    if parts.fragment or "#" in text:
        raise ValueError("url must not have a fragment")
    try:
        is_v6 = ipaddress.ip_address(host).version == 6
    except ValueError:
        is_v6 = False
    netloc = f"[{host}]" if is_v6 else host
    if port is not None:
        netloc += f":{port}"
    return f"{scheme}://{netloc}{_PATH}"


def connect_url(endpoint: str, *, key: str | None = None, token: str | None = None) -> str:
    """The endpoint with exactly one credential as a percent-encoded query parameter."""
    if (key is None) == (token is None):
        raise ValueError("exactly one of key and token is needed")
    name, value = ("key", key) if key is not None else ("token", token)
    assert value is not None
    return f"{endpoint}?{name}={quote(value, safe='')}"
