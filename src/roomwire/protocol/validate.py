"""Validation rules for channels, peer ids and request ids, shared by the server and the SDK."""

from __future__ import annotations

import codecs
import re

from .codes import ErrorCode
from .limits import (
    MAX_CHANNEL_BYTES,
    MAX_PEER_ID_BYTES,
    MAX_REQUEST_ID_CHARS,
    RESERVED_CHANNEL_PREFIXES,
)

_CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f]")
_PRINTABLE_ASCII = re.compile("[\x20-\x7e]+")
_RESERVED = re.compile(
    "^(?:" + "|".join(re.escape(p) for p in RESERVED_CHANNEL_PREFIXES) + ")", re.IGNORECASE
)


class ProtocolViolation(ValueError):
    """A value breaks a wire rule. ``code`` is the protocol error code the server answers with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def channel_problem(channel: object) -> str | None:
    """Why ``channel`` is not a valid channel name, or None when it is."""
    if not isinstance(channel, str):
        return "channel must be a string"
    if not channel:
        return "channel must not be empty"
    try:
        size = len(channel.encode("utf-8"))
    except UnicodeEncodeError:
        return "channel is not valid UTF-8"
    if size > MAX_CHANNEL_BYTES:
        return f"channel is {size} bytes long; the limit is {MAX_CHANNEL_BYTES}"
    if _CONTROL_CHARS.search(channel):
        return "channel contains a control character"
    return None


def is_reserved_channel(channel: str) -> bool:
    """True for ``_metered/``, ``_internal/`` and ``_system/`` channels (any letter case)."""
    return _RESERVED.match(channel) is not None


def validate_channel(channel: object, *, allow_reserved: bool = False) -> str:
    """Return ``channel`` if it is a usable channel name, else raise ProtocolViolation."""
    problem = channel_problem(channel)
    if problem is not None:
        raise ProtocolViolation(ErrorCode.INVALID_CHANNEL, problem)
    assert isinstance(channel, str)
    if not allow_reserved and is_reserved_channel(channel):
        raise ProtocolViolation(
            ErrorCode.CHANNEL_RESERVED,
            f"channel {channel[:40]!r} uses a reserved prefix (_metered/, _internal/, _system/)",
        )
    return channel


def peer_id_problem(peer_id: object) -> str | None:
    """Why ``peer_id`` is not a valid peer id (1-128 printable ASCII bytes), or None."""
    if not isinstance(peer_id, str):
        return "peer id must be a string"
    if not peer_id:
        return "peer id must not be empty"
    if len(peer_id) > MAX_PEER_ID_BYTES:
        return f"peer id is {len(peer_id)} characters long; the limit is {MAX_PEER_ID_BYTES}"
    if _PRINTABLE_ASCII.fullmatch(peer_id) is None:
        return "peer id must be printable ASCII"
    return None


def peer_id_ok(peer_id: object) -> bool:
    """``peer_id_problem(peer_id) is None``, without building a message: the check on every
    direct ``send``. Printable ASCII is exactly the ASCII characters ``str.isprintable``
    accepts (space to tilde)."""
    return (
        isinstance(peer_id, str)
        and 0 < len(peer_id) <= MAX_PEER_ID_BYTES
        and peer_id.isascii()
        and peer_id.isprintable()
    )


def request_id_ok(request_id: object) -> bool:
    """``request_id_problem(request_id) is None``, without building a message."""
    return (
        isinstance(request_id, str) and 0 < len(request_id) <= MAX_REQUEST_ID_CHARS
    )


def validate_peer_id(peer_id: object) -> str:
    """Return ``peer_id`` if valid, else raise ProtocolViolation(invalid_peer_id)."""
    problem = peer_id_problem(peer_id)
    if problem is not None:
        raise ProtocolViolation(ErrorCode.INVALID_PEER_ID, problem)
    assert isinstance(peer_id, str)
    return peer_id


def request_id_problem(request_id: object) -> str | None:
    """Why ``request_id`` is not a valid request id (a 1-128 character string), or None."""
    if not isinstance(request_id, str):
        return "requestId must be a string"
    if not request_id:
        return "requestId must not be empty"
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        return f"requestId is longer than {MAX_REQUEST_ID_CHARS} characters"
    return None


def utf8_ok(data: bytes) -> bool:
    """Whether ``data`` is valid UTF-8. ASCII, which nearly every SDP and ICE candidate is,
    is answered without decoding."""
    if data.isascii():
        return True
    try:
        codecs.utf_8_decode(data, "strict", True)
    except UnicodeDecodeError:
        return False
    return True
