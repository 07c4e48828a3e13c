"""Which endpoint wants which event, and which webhook targets are allowed. Pure.

A target on a private, loopback, link-local, multicast, reserved or unspecified address is
refused unless an operator network (``webhook_allowed_networks``) contains it: a webhook is a
request the server makes on a tenant's behalf, and must not reach the operator's own network.
Checked on the URL when an endpoint is saved (literal addresses, ``localhost``) and again on
every address a host name resolves to when a request is made (so a name that later resolves
inward is refused too).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from ...protocol.patterns import matches_any, pattern_problem
from .model import CONNECTION_EVENTS, DEFAULT_EVENT_TYPES, EVENT_TYPES, Endpoint

MAX_URL_LENGTH = 2048
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def wants(endpoint: Endpoint, event_type: str, channel: str | None) -> bool:
    """Whether ``endpoint`` asked for this event. Connection events have no channel and go to
    every endpoint that asked for their type."""
    if not endpoint.enabled or event_type not in endpoint.events:
        return False
    if channel is None or event_type in CONNECTION_EVENTS:
        return True
    return matches_any(endpoint.channel_patterns, channel)


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """``webhook_allowed_networks`` as networks; raises ValueError naming a bad entry."""
    out: list[Network] = []
    for v in values:
        try:
            out.append(ipaddress.ip_network(v.strip(), strict=False))
        except ValueError:
            raise ValueError(f"webhook_allowed_networks: {v!r} is not an IP network "
                             "(like 127.0.0.0/8 or 10.1.2.3/32)") from None
    return tuple(out)


def address_allowed(address: str, allowed: Sequence[Network]) -> bool:
    """Whether a request may go to ``address`` (an IP literal)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in net for net in allowed):
        return True
    return not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
                or ip.is_reserved or ip.is_unspecified)


def url_problem(url: object, allowed: Sequence[Network] | None = None) -> str | None:
    """Why ``url`` cannot be a webhook target, or None. With ``allowed`` given, a literal
    address (or ``localhost``) outside it is refused as well."""
    if not isinstance(url, str) or not url:
        return "the webhook url must be a non-empty string"
    if (len(url) > MAX_URL_LENGTH or not url.isascii() or not url.isprintable()
            or " " in url):
        return f"the webhook url must be printable ASCII of at most {MAX_URL_LENGTH} characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "the webhook url is not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "the webhook url must start with http:// or https://"
    if not parts.hostname:
        return "the webhook url has no host"
    if parts.username is not None or parts.password is not None:
        return "the webhook url must not carry credentials (sign with the secret instead)"
    if parts.fragment:
        return "the webhook url must not have a #fragment"
    if port == 0:
        return "the webhook url has port 0"
    if allowed is not None:
        host = parts.hostname
        if host.lower() == "localhost" or host.lower().endswith(".localhost"):
            host = "127.0.0.1"
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return None  # a name: its addresses are checked when a request is made
        if not address_allowed(host, allowed):
            return ("the webhook url points to a private, loopback or link-local address; "
                    "an operator must allow that network (webhook_allowed_networks)")
    return None


def events_problem(events: object) -> str | None:
    if not isinstance(events, list | tuple | frozenset | set) or not events:
        return "events must be a non-empty list of event types"
    unknown = [e for e in events if e not in EVENT_TYPES]
    if unknown:
        return f"unknown event type {str(unknown[0])[:40]!r}; known: {', '.join(EVENT_TYPES)}"
    return None


def patterns_problem(patterns: object) -> str | None:
    if not isinstance(patterns, list | tuple) or not patterns or len(patterns) > 100:
        return "channelPatterns must be a list of 1 to 100 channel patterns"
    for p in patterns:
        problem = pattern_problem(p)
        if problem:
            return problem
    return None


def endpoint_from_config(entry: dict[str, Any], default_app: str) -> Endpoint:
    """One ``[[webhooks]]`` table of the TOML config as an endpoint (id stable across
    restarts, so the outbox keeps its rows)."""
    allowed_keys = {"app", "url", "events", "channel_patterns", "secret", "id", "enabled"}
    unknown = set(entry) - allowed_keys
    if unknown:
        raise ValueError(f"[[webhooks]]: unknown setting {sorted(unknown)[0]!r}")
    url = entry.get("url")
    problem = url_problem(url)
    if problem:
        raise ValueError(f"[[webhooks]]: {problem}")
    assert isinstance(url, str)
    secret = entry.get("secret")
    if not isinstance(secret, str) or len(secret) < 16:
        raise ValueError("[[webhooks]]: secret must be a string of at least 16 characters")
    events = entry.get("events", sorted(DEFAULT_EVENT_TYPES))
    problem = events_problem(events)
    if problem:
        raise ValueError(f"[[webhooks]]: {problem}")
    patterns = entry.get("channel_patterns", ["**"])
    problem = patterns_problem(patterns)
    if problem:
        raise ValueError(f"[[webhooks]]: {problem}")
    app = entry.get("app") or default_app
    if not isinstance(app, str):
        raise ValueError("[[webhooks]]: app must be an app id")
    endpoint_id = entry.get("id") or "whc_" + hashlib.sha256(
        f"{app}\x00{url}".encode()).hexdigest()[:12]
    return Endpoint(str(endpoint_id), app, url, frozenset(events), tuple(patterns), secret,
                    bool(entry.get("enabled", True)), "config")
