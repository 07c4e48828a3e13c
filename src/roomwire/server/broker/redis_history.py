"""Channel history in a cluster: Redis Streams on the channel's shard (docs/cluster.md,
"History in Redis").

Per channel two keys live on the shard that holds the channel: the stream ``hs:`` (one
entry per publication, its ID ``0-<offset>``, one field packed by the node; trimmed by
``XADD MAXLEN ~``, reads serve the rule's ``size`` newest) and the meta string ``hm:`` (the
epoch). Both expire ``ttl`` (to ``ttl`` + ``renew_every(ttl)``: ``Renewals``) after the last
publication or opted-in subscribe, as a node's idle history is forgotten. Needs Redis 7
(``XADD 0-*``).

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
from .wire import history_entry, parse_entry, posted_head

__all__ = ["APPEND", "READ", "ClusterHistory", "HistoryRunner", "Renewals", "parse_read",
           "renew_every"]

# The meta key is a string: the epoch, with a "+" once the stream holds a publication of it
# (without: started by an opted-in subscribe, nothing published yet). Offsets are the
# sequence part of the stream IDs ("0-<offset>", XADD "0-*" counts them), so the append
# costs four Redis calls when it renews the keys' expiry: XADD, GETEX (the epoch, its
# expiry renewed), PEXPIRE, PUBLISH; two in three when it does not (``Renewals``): XADD, GET,
# PUBLISH.
# What costs Redis is mostly per call and per argument (docs/benchmarks.md, issue 16), so
# an entry is one field (``wire.history_entry``: time, data, sender, sender metadata,
# packed by the node) which is also the middle of the Posted frame, and the trimming is
# approximate (``MAXLEN ~``: whole radix-tree nodes, no rewrite of a partly trimmed one),
# so a stream keeps a little more than ``size`` entries; READ serves only the ``size``
# newest, as an exact trim would have kept.

# KEYS: stream, meta. ARGV: "<size> <expiry in ms> <epoch to start with> <renew> <reply>"
# (the last two 1 or 0), the pub/sub channel, the Posted frame's start
# (``wire.posted_head``), the entry (``wire.history_entry``). Without "renew" the keys'
# expiry is left as it is (``Renewals``), but a stream this append created gets one.
# Returns {offset, epoch} with "reply" (a publisher's ack waits for them), else the offset
# alone: turning a table into a reply costs Redis more than one of the calls above.
APPEND = """
local size, ttl, fresh, renew, reply = string.match(ARGV[1],
                                                    '^(%d+) (%d+) (%S+) ([01]) ([01])$')
local function add()
  local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', size, '0-*', 'p', ARGV[4])
  return tonumber(string.sub(id, 3))
end
local offset = add()
local meta
if renew == '1' then
  meta = redis.call('GETEX', KEYS[2], 'PX', ttl)
else
  meta = redis.call('GET', KEYS[2])
end
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
if renew == '1' or offset == 1 then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
redis.call('PUBLISH', ARGV[2], ARGV[3] .. ARGV[4] .. cmsgpack.pack(offset)
           .. cmsgpack.pack(epoch))
if reply == '1' then
  return {offset, epoch}
end
return offset
"""

# KEYS: stream, meta. ARGV: epoch to start with ('' = read only, start nothing), ttl in ms,
# the ID of the first offset wanted ("0-<after + 1>", formatted by the node: Lua's numbers
# would print large ones in exponent form), count (0: the position only), max bytes (0: no
# bound), '1' newest first, the rule's size (entries older than the size newest count as
# trimmed).
# Returns {epoch or false, top, entries, more, entry after+1 (for its time) or false}.
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
-- XADD's approximate trimming keeps some entries older than the size newest: they count as
-- trimmed, so what a reader sees is what an exact trim would have kept.
local oldest = top - tonumber(ARGV[7]) + 1
local kept = tonumber(string.sub(first, 3)) >= oldest
if not kept then
  first = string.format('0-%d', oldest)
end
local want = tonumber(ARGV[4])
local bound = tonumber(ARGV[5])
-- An entry's payload bytes (data, sender, metadata: Entry.size less the overhead): its
-- length less the time (a float64, 9 bytes) and the three msgpack headers.
local function payload(v)
  local n = #v - 9
  local pos = 10
  for _ = 1, 3 do
    local b = string.byte(v, pos)
    local h, len = 1, 0
    if b == 196 then
      h, len = 2, string.byte(v, pos + 1)
    elseif b == 197 then
      local b1, b2 = string.byte(v, pos + 1, pos + 2)
      h, len = 3, b1 * 256 + b2
    elseif b == 198 then
      local b1, b2, b3, b4 = string.byte(v, pos + 1, pos + 4)
      h, len = 5, ((b1 * 256 + b2) * 256 + b3) * 256 + b4
    end
    n = n - h
    pos = pos + h + len
  end
  return n
end
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
      used = used + payload(entry[2][2]) + OVERHEAD
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
local anchor = false
if top > 0 and kept then
  local at = redis.call('XRANGE', KEYS[1], first, first)
  if at[1] then
    anchor = at[1][2][2]
  end
end
return {epoch, top, found, more, anchor}
""".replace("OVERHEAD", str(ENTRY_OVERHEAD)).replace("CHUNK", "100")


def _entry(raw: Any) -> Entry:
    ident, (_, value) = raw
    time, data, sender, metadata = parse_entry(bytes(value))
    size = (len(data) + len(sender) + (len(metadata) if metadata is not None else 0)
            + ENTRY_OVERHEAD)
    return Entry(int(bytes(ident).split(b"-", 1)[1]), time, data, sender, metadata, size)


def parse_read(reply: Any) -> HistoryRead:
    """The ``READ`` script's reply as a ``HistoryRead``."""
    epoch, top, found, more, anchor = reply
    return HistoryRead(
        None if epoch is None else bytes(epoch).decode(), int(top),
        [_entry(raw) for raw in found],
        None if anchor is None else parse_entry(bytes(anchor))[0], bool(int(more)))


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


def resolve_reply(fut: asyncio.Future[Any], parse: Callable[[Any], Any],
                  what: str = "history") -> Callable[[Any], None]:
    """The callback that settles ``fut`` with a script's parsed reply, or fails it naming
    ``what`` of the cluster did not answer (Redis failed or is out of reach)."""
    def done(res: Any) -> None:
        if fut.done():
            return
        if isinstance(res, BaseException):
            fut.set_exception(RuntimeError(f"the cluster's {what} did not answer: {res}"))
        else:
            fut.set_result(parse(res))
    return done


def _position(res: Any) -> Position:
    offset, epoch = res
    return Position(bytes(epoch).decode(), int(offset))


RENEW_EVERY = 1.0
"""Seconds between two renewals of a channel's keys' expiry by one node, at most (a tenth of
the ttl when that is shorter): the keys live ``ttl`` to ``ttl`` + this after the last
publication."""
_RENEWALS_MAX = 4096


def renew_every(ttl: float) -> float:
    """The renewal interval for histories of ``ttl`` seconds (``Renewals``)."""
    return min(RENEW_EVERY, ttl / 10)


class Renewals:
    """Which of a node's appends renew the expiry of the channel's keys: a channel's first,
    then one per ``renew_every(ttl)`` seconds (the node's clock), each renewal setting
    ``ttl`` plus that interval, so the keys outlive every publication by ``ttl`` at least.
    The others skip two of the script's four Redis calls. Pure: the caller gives the time."""

    def __init__(self, limit: int = _RENEWALS_MAX) -> None:
        self.limit = limit
        self._last: dict[tuple[str, str], float] = {}

    def due(self, key: tuple[str, str], now: float, every: float) -> bool:
        last = self._last.get(key)
        # A clock that went back renews too: the interval is not known then.
        if last is not None and last <= now < last + every:
            return False
        if last is None and len(self._last) >= self.limit:
            # Forgetting costs a renewal per channel, once; keeping all would grow with
            # every channel ever published to.
            self._last.clear()
        self._last[key] = now
        return True


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
        self.renewals = Renewals()

    def rule(self, app_id: str, channel: str) -> HistoryRule | None:
        return self.rules.lookup((app_id, channel))

    def append(self, app_id: str, channel: str, rule: HistoryRule, now: float, data: bytes,
               sender_json: bytes, sender_metadata: bytes | None, skip: int,
               want_position: bool) -> asyncio.Future[Position] | None:
        """Record and publish one message (to every node, this one included: its opted-in
        subscribers get it from Redis, with the offset). A future of the position when
        ``want_position`` (the ack of an opted-in publisher), else None."""
        runner = self.runner
        fut: asyncio.Future[Position] | None = None
        then = None
        every = renew_every(rule.ttl)
        if want_position:
            fut = asyncio.get_running_loop().create_future()
            then = resolve_reply(fut, _position)
        runner.run_history(app_id, channel, "append", (
            f"{rule.size} {int((rule.ttl + every) * 1000)} {self._epochs()} "
            f"{'1' if self.renewals.due((app_id, channel), now, every) else '0'} "
            f"{'1' if want_position else '0'}",
            runner.keys.channel(app_id, channel), posted_head(runner.inst, skip),
            history_entry(now, data, sender_json, sender_metadata)), then)
        return fut

    def read(self, app_id: str, channel: str, rule: HistoryRule, after: int, *,
             start: bool, count: int | None = None, max_bytes: int | None = None,
             newest_first: bool = False) -> asyncio.Future[HistoryRead]:
        """Read the position and the entries after ``after`` (up to ``count``, at least one
        and about ``max_bytes`` at most). ``start``: an opted-in subscribe, which starts the
        channel's history when there is none (a new epoch) and keeps it from expiring."""
        fut: asyncio.Future[HistoryRead] = asyncio.get_running_loop().create_future()
        self.runner.run_history(app_id, channel, "read", (
            self._epochs() if start else "",
            # As the appends' expiry: a read must not shorten what an append set.
            int((rule.ttl + renew_every(rule.ttl)) * 1000), f"0-{after + 1}",
            count if count is not None else rule.size, max_bytes or 0,
            "1" if newest_first else "0", rule.size), resolve_reply(fut, parse_read))
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
