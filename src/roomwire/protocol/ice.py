"""TURN credentials on the wire, and roomwire's ``ice_servers`` extension frame.

The username of a TURN credential minted by roomwire is ``<expiry unix seconds>:<peerId>`` (the
"TURN REST API" scheme coturn checks with ``use-auth-secret``; docs/protocol.md, ICE servers in
the welcome). The server formats it, and the SDK reads the expiry back to know when to ask for
fresh credentials.

The extension (docs/protocol.md, "roomwire extension: fresh ICE servers"): a client sends
``{"type": "ice_servers", "requestId": "..."}`` and a roomwire server answers
``{"type": "ice_servers", "requestId": "...", "iceServers": [...]}``, the list a welcome on this
connection would carry now. Other servers answer ``unknown_type``; the official SDKs never send
it.
"""

from __future__ import annotations

__all__ = ["ICE_SERVERS_TYPE", "turn_expiry", "turn_username"]

ICE_SERVERS_TYPE = "ice_servers"
"""The ``type`` of both the extension's request and its reply."""

_MAX_EXPIRY_DIGITS = 12
"""Unix seconds stay under 12 digits for thirty thousand years; a longer prefix is not ours."""


def turn_username(expiry: int, peer_id: str) -> str:
    """The TURN username for a credential valid until ``expiry`` (unix seconds)."""
    return f"{int(expiry)}:{peer_id}"


def turn_expiry(username: object) -> int | None:
    """The expiry (unix seconds) of a ``<expiry>:<peerId>`` TURN username, or None when the
    username is not in that form (a static credential, which roomwire cannot refresh)."""
    if not isinstance(username, str):
        return None
    head, sep, _ = username.partition(":")
    if not sep or not head.isdigit() or not head.isascii() or len(head) > _MAX_EXPIRY_DIGITS:
        return None
    return int(head)
