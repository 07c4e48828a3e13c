"""The replay ledger of a cluster: one hash per (app, sub, channel) on the channel's shard
(docs/protocol.md, "Replay for the official SDKs"; docs/cluster.md).

A mark says where a token identity stood on a channel when a connection of it dropped; the
node it comes back to, whichever it is, takes it. The semantics are ``server/replay.py``'s
``Ledger`` (the earliest position of the current epoch, and how many connections are still
owed it), kept atomic by two scripts; the window is the hash's expiry, so Redis forgets a
mark on time and nothing needs sweeping or counting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from ...protocol.history import Position
from .redis_history import resolve_reply

__all__ = ["MARK", "TAKE", "ClusterLedger", "LedgerRunner", "parse_take"]

# KEYS: the mark. ARGV: epoch, offset, window in ms. Returns the connections now owed.
MARK = """
local epoch = redis.call('HGET', KEYS[1], 'e')
local offset = ARGV[2]
local pending = 1
if epoch then
  pending = tonumber(redis.call('HGET', KEYS[1], 'p') or '0') + 1
  local kept = redis.call('HGET', KEYS[1], 'o')
  if epoch == ARGV[1] and kept and tonumber(kept) <= tonumber(ARGV[2]) then
    offset = kept
  end
end
redis.call('HSET', KEYS[1], 'e', ARGV[1], 'o', offset, 'p', pending)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return pending
"""

# KEYS: the mark. Returns {epoch, offset} (one connection's share of it), or nil.
TAKE = """
local m = redis.call('HMGET', KEYS[1], 'e', 'o', 'p')
if not m[1] then
  return false
end
if tonumber(m[3] or '1') <= 1 then
  redis.call('DEL', KEYS[1])
else
  redis.call('HINCRBY', KEYS[1], 'p', -1)
end
return {m[1], m[2]}
"""


def parse_take(reply: Any) -> Position | None:
    """The ``TAKE`` script's reply: the mark's position, or None (no mark, or expired)."""
    if reply is None:
        return None
    epoch, offset = reply
    return Position(bytes(epoch).decode(), int(offset))


@runtime_checkable
class LedgerRunner(Protocol):
    """What runs the scripts: the cluster broker (``RedisBroker``)."""

    def run_replay(self, app_id: str, channel: str, sub: str, script: str,
                   args: tuple[Any, ...], then: Callable[[Any], None] | None) -> None:
        """Run ``script`` ("mark" or "take") on the channel's shard with KEYS (the mark of
        ``sub`` on ``channel``) and ``args``; ``then`` gets the reply, or an exception."""
        ...


class ClusterLedger:
    """Marks in Redis, for every node of the cluster."""

    def __init__(self, runner: LedgerRunner) -> None:
        self.runner = runner

    def dropped(self, app_id: str, sub: str, channel: str, position: Position,
                window: float) -> None:
        """A connection of ``sub`` dropped off ``channel`` at ``position`` (fire and forget:
        a lost mark only means nothing is replayed)."""
        self.runner.run_replay(app_id, channel, sub, "mark", (
            position.epoch, str(position.offset), int(window * 1000)), None)

    def take(self, app_id: str, sub: str, channel: str) -> asyncio.Future[Position | None]:
        """The position one returning connection of ``sub`` is owed on ``channel``, if any;
        the future fails when Redis did not answer."""
        fut: asyncio.Future[Position | None] = asyncio.get_running_loop().create_future()
        self.runner.run_replay(app_id, channel, sub, "take", (),
                               resolve_reply(fut, parse_take, "ledger"))
        return fut
