"""Channel history in a cluster: Redis Streams on the channel's shard (docs/cluster.md,
"History in Redis").

Per channel two keys live on the shard that holds the channel: the stream ``hs:`` (one
entry per publication, its ID ``0-<offset>``, trimmed to the rule's size by ``XADD MAXLEN``)
and the meta string ``hm:`` (the epoch). Both expire ``ttl`` after the last publication (or
opted-in subscribe), as a node's idle history is forgotten. Needs Redis 7 (``XADD 0-*``).

* **Append.** One script allocates the offset, adds the entry, renews the expiry and
  PUBLISHes the message with its offset on the channel's Redis channel (a ``wire.Posted``):
  the offset order and the order every node hears the messages in are both Redis's order,
  so a subscriber sees offsets increase with no gap. It replaces the plain ``PUBLISH`` of a
  channel with history: one command per publish, in the node's pipeline.
* **Read.** One script returns the position and the entries after an offset, bounded in
  count and bytes. A read that may start a history (an opted-in subscribe) creates the epoch
  when there is none.
* **Lost history.** A meta key that is gone (expired, deleted, FLUSHALL, a Redis restarted
  without persistence) while the stream is not, or a stream gone while the meta says it had
  publications, starts a new epoch with offsets from 1: clients that recover from the old
  one get ``recovered: false``.

The decisions (complete or not, what to replay) are ``server/history.py``'s, pure; this module
builds the commands and reads their replies. ``RedisBroker`` runs them (``run_history``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from ...protocol.history import Position
from ..history import (
    ENTRY_OVERHEAD,
    Entry,
    HistoryRead,
    HistoryRule,
    RuleBook,
    decide_read,
    new_epoch,
)
from .routing import Keys
from .wire import posted_head

__all__ = ["APPEND", "READ", "ClusterHistory", "HistoryRunner", "parse_read"]

# The meta key is a string: the epoch, with a "+" once the stream holds a publication of it
# (without: started by an opted-in subscribe, nothing published yet). Offsets are the
# sequence part of the stream IDs ("0-<offset>", XADD "0-*" counts them), so the append
# costs four Redis calls: XADD, GETEX (the epoch, its expiry renewed), PEXPIRE, PUBLISH. Its
# arguments are few on purpose: each one costs Redis about as much as a small command.

# KEYS: stream, meta. ARGV: "<size> <ttl in ms> <epoch to start with> <time>", the pub/sub
# channel, the Posted frame's first six fields as a msgpack array (``wire.posted_head``),
# data, sender, sender metadata ('' for none; Redis's cmsgpack cannot read the head's
# binary fields, so they come again). Returns {offset, epoch}.
APPEND = """
local size, ttl, fresh, now = string.match(ARGV[1], '^(%d+) (%d+) (%S+) (%S+)$')
local head = ARGV[3]
local function add()
  local id
  if ARGV[6] == '' then
    id = redis.call('XADD', KEYS[1], 'MAXLEN', size, '0-*',
                    't', now, 'd', ARGV[4], 's', ARGV[5])
  else
    id = redis.call('XADD', KEYS[1], 'MAXLEN', size, '0-*',
                    't', now, 'd', ARGV[4], 's', ARGV[5], 'm', ARGV[6])
  end
  return tonumber(string.sub(id, 3))
end
local offset = add()
local meta = redis.call('GETEX', KEYS[2], 'PX', ttl)
local epoch
if meta and offset > 1 and string.sub(meta, -1) == '+' then
  epoch = string.sub(meta, 1, -2)
elseif meta and offset == 1 and string.sub(meta, -1) ~= '+' then
  -- The history an opted-in subscribe started: its first publication.
  epoch = meta
  redis.call('SET', KEYS[2], epoch .. '+', 'PX', ttl)
else
  -- The first publication ever, or lost: a stream without its epoch (start again), or an
  -- epoch whose stream is gone. A new epoch, offsets from 1.
  if offset > 1 then
    redis.call('DEL', KEYS[1])
    offset = add()
  end
  epoch = fresh
  redis.call('SET', KEYS[2], epoch .. '+', 'PX', ttl)
end
redis.call('PEXPIRE', KEYS[1], ttl)
-- 0x98: an array of 8, the six of the head then offset and epoch.
redis.call('PUBLISH', ARGV[2], '\\152' .. string.sub(head, 2) .. cmsgpack.pack(offset)
           .. cmsgpack.pack(epoch))
return {offset, epoch}
"""

# KEYS: stream, meta. ARGV: epoch to start with ('' = read only, start nothing), ttl in ms,
# the ID of the first offset wanted ("0-<after + 1>", formatted by the node: Lua's numbers
# would print large ones in exponent form), count (0: the position only), max bytes (0: no
# bound), '1' newest first.
# Returns {epoch or false, top, entries, more, time of entry after+1 or false}.
READ = """
local meta = redis.call('GET', KEYS[2])
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local top = 0
if last[1] then
  top = tonumber(string.sub(last[1][1], 3))
end
local epoch = false
if meta then
  if string.sub(meta, -1) == '+' then
    if top > 0 then
      epoch = string.sub(meta, 1, -2)
    end
  elseif top == 0 then
    epoch = meta
  end
end
if not epoch then
  if ARGV[1] == '' then
    return {false, 0, {}, 0, false}
  end
  redis.call('DEL', KEYS[1])
  top = 0
  epoch = ARGV[1]
  redis.call('SET', KEYS[2], epoch, 'PX', ARGV[2])
elseif ARGV[1] ~= '' then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local first = ARGV[3]
local want = tonumber(ARGV[4])
local bound = tonumber(ARGV[5])
local found = {}
local more = 0
-- In chunks, so that a read bounded in bytes never loads more of a large history.
local lo, hi = first, '+'
local used = 0
local stop = top == 0
while not stop and #found < want do
  local n = math.min(CHUNK, want - #found)
  local chunk
  if ARGV[6] == '1' then
    chunk = redis.call('XREVRANGE', KEYS[1], hi, lo, 'COUNT', n)
  else
    chunk = redis.call('XRANGE', KEYS[1], lo, hi, 'COUNT', n)
  end
  for _, entry in ipairs(chunk) do
    if bound > 0 then
      local fields = entry[2]
      for j = 2, #fields, 2 do
        if fields[j - 1] ~= 't' then
          used = used + #fields[j]
        end
      end
      used = used + OVERHEAD
      if used > bound then
        -- Over the bound: "more" (a recovery is refused); a page keeps one entry at least.
        more = 1
        if #found == 0 then
          found[1] = entry
        end
        stop = true
        break
      end
    end
    found[#found + 1] = entry
  end
  if stop or #chunk < n then
    break
  end
  if ARGV[6] == '1' then
    hi = '(' .. chunk[#chunk][1]
  else
    lo = '(' .. chunk[#chunk][1]
  end
end
local anchor_time = false
if top > 0 then
  local anchor = redis.call('XRANGE', KEYS[1], first, first)
  if anchor[1] then
    local fields = anchor[1][2]
    for j = 1, #fields, 2 do
      if fields[j] == 't' then
        anchor_time = fields[j + 1]
      end
    end
  end
end
return {epoch, top, found, more, anchor_time}
""".replace("OVERHEAD", str(ENTRY_OVERHEAD)).replace("CHUNK", "100")


def _entry(raw: Any) -> Entry:
    ident, flat = raw
    fields = {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}
    data = bytes(fields[b"d"])
    sender = bytes(fields[b"s"])
    md = fields.get(b"m")
    metadata = bytes(md) if md is not None else None
    size = (len(data) + len(sender) + (len(metadata) if metadata is not None else 0)
            + ENTRY_OVERHEAD)
    return Entry(int(bytes(ident).split(b"-", 1)[1]), float(fields[b"t"]), data, sender,
                 metadata, size)


def parse_read(reply: Any) -> HistoryRead:
    """The ``READ`` script's reply as a ``HistoryRead``."""
    epoch, top, found, more, anchor = reply
    return HistoryRead(
        None if epoch is None else bytes(epoch).decode(), int(top),
        [_entry(raw) for raw in found], None if anchor is None else float(anchor),
        bool(int(more)))


@runtime_checkable
class HistoryRunner(Protocol):
    """What runs the scripts: the cluster broker (``RedisBroker``)."""

    inst: str
    keys: Keys

    def run_history(self, app_id: str, channel: str, script: str, args: tuple[Any, ...],
                    then: Callable[[Any], None] | None) -> None:
        """Run ``script`` ("append" or "read") on the channel's shard, in the order of this
        node's other commands there, with KEYS (stream, meta) and ``args``; ``then`` gets
        the reply, or an exception when Redis failed or is out of reach."""
        ...


def _resolve(fut: asyncio.Future[Any], parse: Callable[[Any], Any]) -> Callable[[Any], None]:
    def done(res: Any) -> None:
        if fut.done():
            return
        if isinstance(res, BaseException):
            fut.set_exception(RuntimeError(f"the cluster's history did not answer: {res}"))
        else:
            fut.set_result(parse(res))
    return done


def _position(res: Any) -> Position:
    offset, epoch = res
    return Position(bytes(epoch).decode(), int(offset))


class _EpochSource:
    """Epochs for the scripts to start a history with, should they have to: every append
    and read carries one. A random prefix per node run and a counter, not a random string
    per call: reading the system's randomness on every publish costs more than the rest of
    the command."""

    def __init__(self) -> None:
        self._prefix = new_epoch()[:6]
        self._n = 0

    def __call__(self) -> str:
        self._n += 1
        return f"{self._prefix}{self._n:x}"


class ClusterHistory:
    """Every channel history of a cluster, in Redis. The node's hub appends and reads
    through it; ``read_after`` serves whoever needs "what channel C kept after P"."""

    def __init__(self, runner: HistoryRunner, rules: RuleBook[HistoryRule],
                 epochs: Callable[[], str] | None = None) -> None:
        self.runner = runner
        self.rules = rules
        self._epochs = epochs or _EpochSource()

    def rule(self, app_id: str, channel: str) -> HistoryRule | None:
        return self.rules.lookup((app_id, channel))

    def append(self, app_id: str, channel: str, rule: HistoryRule, now: float, data: bytes,
               sender_json: bytes, sender_metadata: bytes | None, skip: int,
               want_position: bool) -> asyncio.Future[Position] | None:
        """Record and publish one message (to every node, this one included: its opted-in
        subscribers get it from Redis, with the offset). A future of the position when
        ``want_position`` (the ack of an opted-in publisher), else None."""
        runner = self.runner
        if type(data) is not bytes:
            # The session hands ``data`` over as msgspec.Raw, which msgpack would embed
            # verbatim rather than as bytes.
            data = bytes(data)
        fut: asyncio.Future[Position] | None = None
        then = None
        if want_position:
            fut = asyncio.get_running_loop().create_future()
            then = _resolve(fut, _position)
        runner.run_history(app_id, channel, "append", (
            f"{rule.size} {int(rule.ttl * 1000)} {self._epochs()} {now!r}",
            runner.keys.channel(app_id, channel),
            posted_head(runner.inst, skip, data, sender_json, sender_metadata), data,
            sender_json, sender_metadata if sender_metadata is not None else b""), then)
        return fut

    def read(self, app_id: str, channel: str, rule: HistoryRule, after: int, *,
             start: bool, count: int | None = None, max_bytes: int | None = None,
             newest_first: bool = False) -> asyncio.Future[HistoryRead]:
        """Read the position and the entries after ``after`` (up to ``count``, at least one
        and about ``max_bytes`` at most). ``start``: an opted-in subscribe, which starts the
        channel's history when there is none (a new epoch) and keeps it from expiring."""
        fut: asyncio.Future[HistoryRead] = asyncio.get_running_loop().create_future()
        self.runner.run_history(app_id, channel, "read", (
            self._epochs() if start else "", int(rule.ttl * 1000), f"0-{after + 1}",
            count if count is not None else rule.size, max_bytes or 0,
            "1" if newest_first else "0"), _resolve(fut, parse_read))
        return fut

    async def read_after(self, app_id: str, channel: str, position: Position,
                         max_bytes: int | None, now: float) -> tuple[bool, list[Entry]]:
        """The entries of ``channel`` published after ``position``, oldest first, as a
        recovering subscriber would get them: ``(True, entries)`` when every publication
        after it is still kept in the same epoch (and, with ``max_bytes``, they weigh no
        more than that together: ``Entry.size``), else ``(False, [])``, as for
        ``recovered: false``. A channel no history rule covers, or whose history is gone
        (a new epoch), gives ``(False, [])``. ``now``: the caller's clock (entries older
        than the rule's ttl count as gone). Reads only: starts no history, renews no
        expiry. Raises RuntimeError when Redis did not answer."""
        rule = self.rule(app_id, channel)
        if rule is None:
            return False, []
        read = await self.read(app_id, channel, rule, position.offset, start=False,
                               max_bytes=max_bytes)
        return decide_read(read, position, now, rule.ttl)
