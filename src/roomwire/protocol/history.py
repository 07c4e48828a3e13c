"""roomwire's history and recovery extension on the wire (docs/protocol.md, "roomwire
extension: history and recovery").

A ``subscribe`` may carry ``"history": true`` or ``"recover": {"epoch", "offset"}``; the ack of
such a subscribe carries ``history`` (the channel's position, or null) and, with ``recover``,
``recovered``. Messages to an opted-in subscriber carry ``offset`` and ``epoch``; so does the
ack of a publish by an opted-in socket. Frames of subscribers that did not opt in never change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

__all__ = [
    "MAX_EPOCH_CHARS",
    "Position",
    "encode_position_ack",
    "encode_position_suffix",
    "encode_subscribe_ack",
    "parse_position",
    "recover_problem",
]

MAX_EPOCH_CHARS = 64
"""Longest epoch a client may send back; roomwire's own are 8 characters."""
_MAX_OFFSET = 2**53 - 1
"""Offsets stay exact in every JSON client (JavaScript numbers included)."""

_encode = msgspec.json.encode


@dataclass(frozen=True, slots=True)
class Position:
    """Where a channel's history stands: ``offset`` is only comparable within ``epoch``."""

    epoch: str
    offset: int


def _offset_ok(value: object) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)
            and 0 <= value <= _MAX_OFFSET)


def recover_problem(value: object) -> Position | str:
    """A subscribe's ``recover`` field as a Position, or a sentence saying what is wrong."""
    if not isinstance(value, dict):
        return "'recover' must be an object {\"epoch\": string, \"offset\": integer}"
    epoch = value.get("epoch")
    offset = value.get("offset")
    if not isinstance(epoch, str) or not 1 <= len(epoch) <= MAX_EPOCH_CHARS:
        return f"'recover.epoch' must be a string of 1 to {MAX_EPOCH_CHARS} characters"
    if not _offset_ok(offset):
        return "'recover.offset' must be an integer >= 0"
    assert isinstance(offset, int)
    return Position(epoch, offset)


def parse_position(frame: dict[str, Any]) -> Position | None:
    """The ``offset``/``epoch`` pair of a server frame (message or publish ack), if valid."""
    offset = frame.get("offset")
    epoch = frame.get("epoch")
    if _offset_ok(offset) and isinstance(epoch, str) and 0 < len(epoch) <= MAX_EPOCH_CHARS:
        assert isinstance(offset, int)
        return Position(epoch, offset)
    return None


def encode_position_suffix(offset: int, epoch_json: bytes) -> bytes:
    """The bytes spliced before the closing brace of a positioned message."""
    return b',"offset":' + str(offset).encode() + b',"epoch":' + epoch_json


def encode_subscribe_ack(request_id: str, position: Position | None,
                         recovered: bool | None) -> bytes:
    """The ack of an opted-in subscribe: ``history`` always (null: no history kept here),
    ``recovered`` when the subscribe asked to recover."""
    frame: dict[str, Any] = {"type": "ack", "requestId": request_id,
                             "history": None if position is None else
                             {"epoch": position.epoch, "offset": position.offset}}
    if recovered is not None:
        frame["recovered"] = recovered
    return _encode(frame)


def encode_position_ack(request_id: str, position: Position) -> bytes:
    """The ack of a publish by a socket that opted in on the channel."""
    return _encode({"type": "ack", "requestId": request_id, "offset": position.offset,
                    "epoch": position.epoch})
