"""The last history position a client saw per channel (roomwire's history extension,
docs/protocol.md "roomwire extension: history and recovery").

Pure bookkeeping: the client feeds it every positioned message, its own publish acks and each
subscribe ack, and asks it where to resume after a reconnect. Frames of one socket arrive in
the order the server produced them, so the latest position seen is the resume point.
"""

from __future__ import annotations

from ...protocol.frames import Ack
from ...protocol.history import Position

__all__ = ["Positions"]


class Positions:
    """channel -> the last position seen on it."""

    def __init__(self) -> None:
        self._at: dict[str, Position] = {}

    def get(self, channel: str) -> Position | None:
        return self._at.get(channel)

    def saw(self, channel: str, position: Position | None) -> None:
        """A message (or one's own publish ack) at ``position``. Another epoch replaces the
        old one: the server forgot the channel's history and started again."""
        if position is None:
            return
        current = self._at.get(channel)
        if current is None or current.epoch != position.epoch or position.offset > current.offset:
            self._at[channel] = position

    def subscribed(self, channel: str, ack: Ack, asked: Position | None) -> bool | None:
        """A subscribe ack; returns ``recovered`` when ``asked`` (the position sent with
        ``recover``), else None. Without history (``history`` null or absent: a server or
        channel that keeps none) the channel is forgotten, so the next resubscribe does not
        ask. When nothing is replayed (a fresh subscribe, or ``recovered`` false) the resume
        point becomes the channel's current position; when the replay follows, its messages
        move it on."""
        if ack.history is None:
            self._at.pop(channel, None)
            return (ack.recovered is True) if asked is not None else None
        if asked is None or ack.recovered is not True:
            self._at[channel] = ack.history
        return ack.recovered is True if asked is not None else None

    def forget(self, channel: str) -> None:
        self._at.pop(channel, None)

    def __len__(self) -> int:
        return len(self._at)
