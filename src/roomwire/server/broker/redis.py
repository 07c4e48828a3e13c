"""The cluster broker: nodes that share Redis (pub/sub for routing, keys for presence).

This module does the I/O; what it means is decided in ``routing.py`` (docs/cluster.md has the
design):

* **Interest-based pub/sub.** A node subscribes ``c:<app>\\0<channel>`` only while it holds
  local members of the channel, ``d:<app>\\0<peer>`` only while it holds a socket of the peer,
  and ``n:<instance>`` (replies) always. A subscribe is acked only after Redis confirmed the
  channel's SUBSCRIBE, and a welcome is sent only after the peer channel's: a publish after
  an ack, or a direct after a welcome, is always heard.
* **Presence in Redis.** Per channel, the members hash ``pm:``, the holders hash ``pc:`` and a
  sequence number ``ps:``, changed only by the ``join``/``leave`` Lua scripts, which also
  PUBLISH the ``Join``/``Leave`` event: the hash and the stream are serialised by Redis. A
  node follows the channels it holds with a ``routing.ChannelView``.
* **One writer per Redis.** Everything a node sends to one Redis goes through one connection
  in order: the hub's calls queue commands synchronously and the writer sends all that was
  queued since its previous round as one pipeline (nothing awaits Redis inside a fan-out).
* **Failure.** The ``nodes`` zset holds each node's heartbeat expiry; one survivor claims an
  expired node (``reap:<inst>``, SET NX) and runs the leave script for every membership in its
  ``nm:<inst>`` set. A node that loses Redis, or finds its own entry expired, closes its
  sockets (going_away + 1001), refuses upgrades and comes back with a new instance id.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ...extras import missing_extra

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError
except ImportError as exc:  # --redis-url without the optional Redis client
    raise missing_extra("cluster", exc) from exc

from ..limits import UsageMeter
from . import Broker, ClusterSink
from .redis_history import APPEND, READ
from .redis_replay import MARK, TAKE
from .routing import (
    Changes,
    ChannelView,
    Keys,
    live_total,
    membership,
    parse_membership,
    remote_receivers,
    shard_of,
)
from .wire import Direct, Join, Kick, KickReply, Leave, Message, Posted, decode, encode

log = logging.getLogger("roomwire.broker.redis")

# KEYS: members, holders, seq, this node's memberships.
# ARGV: peer, entry, pub/sub channel, membership, want a snapshot ("1").
# Idempotent per node (the memberships set), so a retried join never counts twice.
_JOIN = """
-- Returns {seq, snapshot or {}, change, members}: change 1 when the peer became present
-- (its first holder anywhere), 2 when the channel also became occupied; the node that gets
-- it reports the transition (webhooks), so it is reported once in the cluster.
local seq
local change = 0
if redis.call('SADD', KEYS[4], ARGV[4]) == 1
   and redis.call('HINCRBY', KEYS[2], ARGV[1], 1) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  change = 1
  if redis.call('HLEN', KEYS[1]) == 1 then
    change = 2
  end
  seq = redis.call('INCR', KEYS[3])
  redis.call('PERSIST', KEYS[3])
  redis.call('PUBLISH', ARGV[3], cmsgpack.pack({'join', seq, ARGV[1], ARGV[2]}))
else
  seq = tonumber(redis.call('GET', KEYS[3]) or '0')
end
local snapshot = {}
if ARGV[5] == '1' then
  snapshot = redis.call('HGETALL', KEYS[1])
end
return {seq, snapshot, change, redis.call('HLEN', KEYS[1])}
"""

# KEYS as for join. ARGV: peer, pub/sub channel, membership. Only a membership still in the
# set counts down, so the reaper and a late leave of the same node never both do.
# Returns {0} (not a membership), {1} (counted down), or {2 or 3, members, entry} when the
# peer left the channel everywhere (3: the channel is empty now).
_LEAVE = """
if redis.call('SREM', KEYS[4], ARGV[3]) == 0 then
  return {0}
end
if redis.call('HINCRBY', KEYS[2], ARGV[1], -1) <= 0 then
  local entry = redis.call('HGET', KEYS[1], ARGV[1]) or ''
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[1], ARGV[1])
  local members = redis.call('HLEN', KEYS[1])
  local seq = redis.call('INCR', KEYS[3])
  -- The sequence must outlive any view of the channel; a day is far longer than one lasts
  -- without members.
  redis.call('EXPIRE', KEYS[3], 86400)
  redis.call('PUBLISH', ARGV[2], cmsgpack.pack({'leave', seq, ARGV[1]}))
  if members == 0 then
    return {3, 0, entry}
  end
  return {2, members, entry}
end
return {1}
"""

# KEYS: nodes zset. ARGV: instance, ttl in ms, "1" to register (else only refresh an entry
# still there: a node already reaped is not brought back by a late heartbeat).
# Returns {previous expiry or false, live nodes, expired nodes}. Expiries are on Redis's
# clock, so the nodes' clocks need not agree.
_BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local old = redis.call('ZSCORE', KEYS[1], ARGV[1])
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  old = tostring(now)
elseif old and tonumber(old) >= now then
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
end
if old and tonumber(old) < now then
  old = false
end
return {old, redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf'),
        redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)}
"""

# Add a node's new messages to the cluster counter; never let it fall below what the node
# already counted (Redis may have lost it).
_USAGE = """
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if v < tonumber(ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[2])
  v = tonumber(ARGV[2])
end
redis.call('EXPIREAT', KEYS[1], ARGV[3])
return v
"""

_Result = Any
_Op = tuple[tuple[Any, ...], Callable[[_Result], None] | None]


def _reraise_cancellation() -> None:
    # The Redis client can swallow a cancellation that lands while it writes a command;
    # without this a cancelled loop would go round again and outlive stop().
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class _Lost(Exception):
    """Raised inside the broker's tasks when Redis answered with an error."""


@dataclass(eq=False)
class _Shard:
    """One Redis: a writer connection, a subscriber connection, and their queues."""

    index: int
    url: str
    redis: Any = None
    pubsub: Any = None
    ops: list[_Op] = field(default_factory=list)
    subs: list[tuple[str, bytes]] = field(default_factory=list)
    confirms: dict[bytes, deque[asyncio.Future[None]]] = field(default_factory=dict)
    dirty: asyncio.Event = field(default_factory=asyncio.Event)
    sub_dirty: asyncio.Event = field(default_factory=asyncio.Event)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    join_sha: str = ""
    leave_sha: str = ""
    history_shas: dict[str, str] = field(default_factory=dict)
    replay_shas: dict[str, str] = field(default_factory=dict)


@dataclass(eq=False)
class _Held:
    """A channel this node holds local members of."""

    app_id: str
    channel: str
    rch: bytes
    shard: _Shard
    keys: tuple[str, str, str]
    ready: asyncio.Future[None]
    view: ChannelView = field(default_factory=ChannelView)
    deferred: list[tuple[str, str, bytes, asyncio.Future[None] | None]] = field(
        default_factory=list)
    waiters: list[tuple[int, asyncio.Future[None]]] = field(default_factory=list)
    reloading: bool = False
    behind: int | None = None


@dataclass(eq=False)
class _Kick:
    future: asyncio.Future[None]
    expected: int | None = None
    answers: int = 0
    closed: int = 0

    def check(self) -> None:
        if (self.expected is not None and self.answers >= self.expected
                and not self.future.done()):
            self.future.set_result(None)


class RedisBroker(Broker):
    """A node of a cluster sharing one or more Redis servers."""

    clustered = True

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "roomwire:",
        node_id: str | None = None,
        presence_ttl: float = 15.0,
        heartbeat_interval: float | None = None,
        usage_sync_interval: float = 1.0,
        command_timeout: float = 3.0,
        kick_timeout: float = 1.0,
        usage: UsageMeter | None = None,
    ) -> None:
        if presence_ttl <= 0:
            raise ValueError("presence_ttl must be positive")
        self.urls = [u.strip() for u in url.split(",") if u.strip()]
        if not self.urls:
            raise ValueError("redis_url names no Redis")
        self.url = url
        self.prefix = prefix
        self.keys = Keys(prefix)
        self.node_id = node_id or f"{socket.gethostname()}-{os.getpid()}"
        self.presence_ttl = presence_ttl
        self.heartbeat_interval = heartbeat_interval or max(0.05, presence_ttl / 5)
        if self.heartbeat_interval >= presence_ttl:
            raise ValueError("heartbeat_interval must be shorter than presence_ttl")
        self.usage_sync_interval = usage_sync_interval
        self.command_timeout = command_timeout
        self.kick_timeout = kick_timeout
        self.usage = usage
        self.healthy = False
        self.inst = ""
        self._sink: ClusterSink | None = None
        self._shards: list[_Shard] = []
        self._live = False
        self._stopping = False
        self._views: dict[tuple[str, str], _Held] = {}
        self._peers: dict[tuple[str, str], asyncio.Future[None]] = {}
        self._unsubscribing: dict[bytes, asyncio.Future[None]] = {}
        self._routes: dict[bytes, tuple[str, str, str]] = {}
        self._followed: dict[bytes, tuple[str, asyncio.Future[None]]] = {}
        """Redis glob -> (app, confirmed): the apps whose every publish this node receives,
        for its pattern subscriptions (one glob per app on every shard: one copy per
        publish)."""
        self._joined: set[tuple[str, str, str]] = set()
        self._live_nodes: set[str] = set()
        self._conns: dict[str, dict[str, int]] = {}
        self._reported: set[str] = set()
        self._reaping: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._recover_task: asyncio.Task[None] | None = None
        self._kicks: dict[int, _Kick] = {}
        self._kick_ids = itertools.count(1)
        self._usage_sent: dict[tuple[str, int], int] = {}
        self._usage_lock = asyncio.Lock()
        self._lose_events = 0
        self.stats = {"published": 0, "received": 0, "reloads": 0, "reaped": 0, "lost": 0}

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, sink: ClusterSink) -> None:
        self._sink = sink
        if self.usage is not None:
            # Counts restored from the store are already in the cluster's counters.
            for app_id, u in self.usage.apps.items():
                self._usage_sent[(app_id, u.period_start)] = u.messages
        try:
            await self._connect()
        except (RedisError, OSError, _Lost) as exc:
            await self._close_clients()
            raise RuntimeError(f"cannot reach Redis at {self.url}: {exc}") from None

    async def stop(self) -> None:
        """Say goodbye: this node's memberships leave at once (the others hear ``left``)."""
        self._stopping = True
        if self._recover_task is not None:
            self._recover_task.cancel()
        if self._live:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained(), self.command_timeout)
            self._live = False
            await self._cancel_tasks()
            with contextlib.suppress(RedisError, OSError, TimeoutError, _Lost):
                await asyncio.wait_for(self._reap(self.inst, claim=False), self.command_timeout)
        self._live = False
        await self._cancel_tasks()
        await self._close_clients()
        self.healthy = False

    async def _drained(self) -> None:
        for shard in self._shards:
            while shard.ops or not shard.idle.is_set():
                shard.idle.clear()
                shard.dirty.set()
                await shard.idle.wait()

    async def _connect(self) -> None:
        """Connect to every Redis, subscribe the node channel, register the node."""
        self.inst = f"{self.node_id}.{secrets.token_hex(4)}"
        self._shards = [_Shard(i, url) for i, url in enumerate(self.urls)]
        node_ch = self.keys.node(self.inst)
        for shard in self._shards:
            shard.redis = aioredis.Redis.from_url(
                shard.url, socket_timeout=self.command_timeout,
                socket_connect_timeout=self.command_timeout, retry=Retry(NoBackoff(), 0),
                health_check_interval=0,
            )
            await shard.redis.ping()
            shard.join_sha = await shard.redis.script_load(_JOIN)
            shard.leave_sha = await shard.redis.script_load(_LEAVE)
            shard.history_shas = {"append": await shard.redis.script_load(APPEND),
                                  "read": await shard.redis.script_load(READ)}
            shard.replay_shas = {"mark": await shard.redis.script_load(MARK),
                                 "take": await shard.redis.script_load(TAKE)}
            # Every subscriber connection holds the node channel, so it always has one
            # subscription to read from (replies come on shard 0's).
            shard.pubsub = shard.redis.pubsub()
            await shard.pubsub.subscribe(node_ch)
            deadline = time.monotonic() + self.command_timeout
            while True:
                if time.monotonic() > deadline:
                    raise RedisError("no subscription confirmation from Redis")
                msg = await shard.pubsub.get_message(timeout=self.command_timeout)
                if msg is not None and msg.get("type") == "subscribe":
                    break
            shard.idle.set()
        r0 = self._shards[0].redis
        _, live, _ = await r0.eval(_BEAT, 1, self.keys.nodes, self.inst, self._ttl_ms, "1")
        self._live_nodes = {m.decode() for m in live}
        self._reported = set()
        self._live = True
        for shard in self._shards:
            self._spawn(self._reader(shard))
            self._spawn(self._writer(shard))
            self._spawn(self._subscriber(shard))
        self._heartbeat_task = self._spawn(self._heartbeat())
        if self.usage is not None:
            self._spawn(self._usage_loop())
        self.healthy = True
        log.info("joined the cluster as %s (%d Redis)", self.inst, len(self._shards))

    @property
    def _ttl_ms(self) -> int:
        return int(self.presence_ttl * 1000)

    async def _cancel_tasks(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        self._tasks = []
        for t in tasks:
            t.cancel()
        for t in tasks:
            # Cancel again should a task have swallowed the first cancellation, rather than
            # wait for it forever.
            while not t.done():
                await asyncio.wait({t}, timeout=0.5)
                if not t.done():
                    log.warning("task %s ignored its cancellation; cancelling again", t)
                    t.cancel()
            with contextlib.suppress(BaseException):
                await t

    async def _close_clients(self) -> None:
        shards, self._shards = self._shards, []
        for shard in shards:
            ps, r = shard.pubsub, shard.redis
            shard.pubsub = shard.redis = None
            if ps is not None:
                with contextlib.suppress(Exception):
                    await ps.aclose()
            if r is not None:
                with contextlib.suppress(Exception):
                    await r.aclose()

    def _lost(self, exc: BaseException | str) -> None:
        """Redis is unreachable (or forgot this node): report unhealthy, close this node's
        sockets, forget the cluster, and come back in the background as a new instance."""
        if not self._live or self._stopping:
            return
        log.warning("lost the cluster (%s); closing this node's sockets until it is back",
                    exc if isinstance(exc, str) else str(exc) or type(exc).__name__)
        self.stats["lost"] += 1
        self._live = False
        self.healthy = False
        # Nothing this instance joined may be left later: its state is the reaper's now.
        self._joined.clear()
        for shard in self._shards:
            ops, shard.ops = shard.ops, []
            for _, cb in ops:
                if cb is not None:
                    cb(_Lost("lost Redis"))
            shard.subs.clear()
            for q in shard.confirms.values():
                for f in q:
                    f.cancel()
            shard.confirms.clear()
        for kick in self._kicks.values():
            if not kick.future.done():
                kick.future.set_result(None)
        for fut in self._peers.values():
            fut.cancel()
        for held in self._views.values():
            held.ready.cancel()
            for _, _, _, d in held.deferred:
                if d is not None:
                    d.cancel()
            for _, f in held.waiters:
                f.cancel()
        if self.health_listener is not None:
            self.health_listener(False)
        # What the closing sockets did not release yet is dropped without a sound: nobody
        # local is left to hear it.
        for key in list(self._views):
            self._forget_view(key)
        self._peers.clear()
        self._unsubscribing.clear()
        self._routes.clear()
        self._followed.clear()
        self._recover_task = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        old = self.inst
        await self._cancel_tasks()
        await self._close_clients()
        # The sockets were told to go; start clean once they are gone (bounded).
        deadline = time.monotonic() + self.command_timeout
        while (self._sink is not None and self._sink.local_connections()
               and time.monotonic() < deadline):
            await asyncio.sleep(0.02)
        delay = 0.05
        while not self._stopping:
            try:
                await self._connect()
                break
            except (RedisError, OSError, _Lost) as exc:
                log.debug("Redis still unreachable: %s", exc)
                self._live = False
                await self._cancel_tasks()
                await self._close_clients()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        if self._stopping:
            return
        self._spawn(self._reap(old, claim=True))
        log.info("back in the cluster; this node accepts sockets again")
        if self.health_listener is not None:
            self.health_listener(True)

    # -- queues --------------------------------------------------------------------------------

    def _send(self, shard: _Shard, args: tuple[Any, ...],
              then: Callable[[_Result], None] | None = None) -> None:
        shard.ops.append((args, then))
        shard.dirty.set()

    def _subscribe(self, shard: _Shard, rch: bytes) -> asyncio.Future[None]:
        """SUBSCRIBE ``rch``; the future completes when Redis confirmed it."""
        return self._pubsub(shard, "SUBSCRIBE", rch)

    def _unsubscribe(self, shard: _Shard, rch: bytes) -> asyncio.Future[None]:
        return self._pubsub(shard, "UNSUBSCRIBE", rch)

    def _pubsub(self, shard: _Shard, command: str, rch: bytes) -> asyncio.Future[None]:
        # Confirmations come back in the order the commands were sent, one queue per channel.
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        shard.confirms.setdefault(rch, deque()).append(fut)
        shard.subs.append((command, rch))
        shard.sub_dirty.set()
        return fut

    async def _writer(self, shard: _Shard) -> None:
        """Send everything queued since the last round, in order, as one pipeline."""
        while True:
            if not shard.ops:
                shard.idle.set()
                await shard.dirty.wait()
            shard.dirty.clear()
            shard.idle.clear()
            ops, shard.ops = shard.ops, []
            if not ops:
                continue
            try:
                pipe = shard.redis.pipeline(transaction=False)
                for args, _ in ops:
                    pipe.execute_command(*args)
                results = await pipe.execute(raise_on_error=False)
            except (RedisError, OSError) as exc:
                self._lost(exc)
                return
            _reraise_cancellation()
            self.stats["published"] += len(ops)
            failed: BaseException | None = None
            for (_, cb), res in zip(ops, results, strict=True):
                if isinstance(res, BaseException):
                    failed = res
                    continue
                if cb is not None:
                    cb(res)
            if failed is not None:
                self._lost(failed)
                return

    async def _subscriber(self, shard: _Shard) -> None:
        """Send SUBSCRIBE/UNSUBSCRIBE in the order they were asked for (their confirmations
        come back in that order on the reader)."""
        while True:
            if not shard.subs:
                await shard.sub_dirty.wait()
            shard.sub_dirty.clear()
            subs, shard.subs = shard.subs, []
            try:
                start = 0
                for n in range(1, len(subs) + 1):
                    if n == len(subs) or subs[n][0] != subs[start][0]:
                        await shard.pubsub.execute_command(
                            subs[start][0], *(rch for _, rch in subs[start:n]))
                        start = n
            except (RedisError, OSError) as exc:
                self._lost(exc)
                return
            _reraise_cancellation()

    def follow_app(self, app_id: str, following: bool) -> asyncio.Future[None] | None:
        """Idempotent while following: every pattern subscribe asks, and gets the same
        future (a new one after the backplane was lost and came back)."""
        pattern = self.keys.app_channels(app_id)
        if not following:
            if self._followed.pop(pattern, None) is not None and self._live:
                for shard in self._shards:
                    self._pubsub(shard, "PUNSUBSCRIBE", pattern)
            return None
        known = self._followed.get(pattern)
        if known is not None:
            return known[1]
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self._live:
            ready.set_exception(RuntimeError("the cluster backplane is down"))
            return ready
        # A channel lives on one shard, chosen by its name: every shard must match the glob.
        confirmed = [self._pubsub(shard, "PSUBSCRIBE", pattern) for shard in self._shards]

        def one_done(f: asyncio.Future[None]) -> None:
            if ready.done():
                return
            if f.cancelled():
                ready.set_exception(RuntimeError("lost the cluster backplane"))
            elif all(c.done() for c in confirmed):
                ready.set_result(None)

        for f in confirmed:
            f.add_done_callback(one_done)
        self._followed[pattern] = (app_id, ready)
        return ready

    # -- outgoing ------------------------------------------------------------------------------

    def _shard(self, app_id: str, name: str) -> _Shard:
        return self._shards[shard_of(app_id, name, len(self._shards))]

    def publish(self, app_id: str, channel: str, data: bytes, sender_json: bytes,
                sender_metadata: bytes | None) -> None:
        if not self._live:
            return
        frame = encode(Message(self.inst, data, sender_json, sender_metadata))
        self._send(self._shard(app_id, channel),
                   ("PUBLISH", self.keys.channel(app_id, channel), frame))

    def run_history(self, app_id: str, channel: str, script: str, args: tuple[Any, ...],
                    then: Callable[[_Result], None] | None) -> None:
        """``redis_history.HistoryRunner``: one history script, in this node's pipeline to
        the channel's shard (so after this node's earlier publishes there)."""
        if not self._live:
            if then is not None:
                then(_Lost("the cluster backplane is down"))
            return
        shard = self._shard(app_id, channel)
        stream, meta = self.keys.history(app_id, channel)
        self._send(shard, ("EVALSHA", shard.history_shas[script], 2, stream, meta, *args), then)

    def run_replay(self, app_id: str, channel: str, sub: str, script: str,
                   args: tuple[Any, ...], then: Callable[[_Result], None] | None) -> None:
        """``redis_replay.LedgerRunner``: one ledger script on the channel's shard."""
        if not self._live:
            if then is not None:
                then(_Lost("the cluster backplane is down"))
            return
        shard = self._shard(app_id, channel)
        self._send(shard, ("EVALSHA", shard.replay_shas[script], 1,
                           self.keys.replay_mark(app_id, channel, sub), *args), then)

    def direct(self, app_id: str, peer_id: str, data: bytes, sender_json: bytes,
               sender_metadata: bytes | None, local: int,
               ) -> int | asyncio.Future[int | None] | None:
        if not self._live:
            return local if local else None
        shard = self._shard(app_id, peer_id)
        rch = self.keys.peer(app_id, peer_id)
        args = ("PUBLISH", rch, encode(Direct(self.inst, data, sender_json,
                                              sender_metadata)))
        if local:
            self._send(shard, args)
            return local
        # No local socket: whether anyone has it is what Redis says the PUBLISH reached.
        fut: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        key = (app_id, peer_id)

        def published(res: _Result) -> None:
            if fut.done():
                return
            if isinstance(res, BaseException):
                fut.cancel()
                return
            n = remote_receivers(int(res), key in self._peers)
            fut.set_result(n if n else None)

        def send(_: object = None) -> None:
            if self._live:
                self._send(shard, args, published)
            elif not fut.done():
                fut.cancel()

        self._after_unsubscribed(rch, send)
        return fut

    def _after_unsubscribed(self, rch: bytes, send: Callable[..., None]) -> None:
        """Run ``send`` (a PUBLISH whose count decides something) once this node's own
        subscription of ``rch`` is not going away any more: until Redis confirmed the
        UNSUBSCRIBE it may count this node, or not."""
        leaving = self._unsubscribing.get(rch)
        if leaving is not None and not leaving.done():
            leaving.add_done_callback(send)
        else:
            send()

    def join(self, app_id: str, channel: str, peer_id: str, entry: bytes,
             ) -> asyncio.Future[None] | None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self._live:
            fut.cancel()
            return fut
        self._joined.add((app_id, channel, peer_id))
        held = self._hold(app_id, channel)
        if self._deferring(held):
            held.deferred.append(("join", peer_id, entry, fut))
        else:
            self._send_join(held, peer_id, entry, fut)
        return fut

    @staticmethod
    def _deferring(held: _Held) -> bool:
        # Until the SUBSCRIBE is confirmed, and until what waited for it went out (its
        # callback runs a little after the confirmation): joins and leaves keep their order.
        return not held.ready.done() or bool(held.deferred)

    def leave(self, app_id: str, channel: str, peer_id: str, last: bool) -> None:
        key = (app_id, channel)
        held = self._views.get(key)
        m = (app_id, channel, peer_id)
        if m in self._joined and self._live:
            self._joined.discard(m)
            if held is not None and self._deferring(held) and not last:
                held.deferred.append(("leave", peer_id, b"", None))
            else:
                if held is not None:
                    self._flush_deferred(held)
                shard = self._shard(app_id, channel)
                pm, pc, ps = self.keys.presence(app_id, channel)
                self._send(shard, ("EVALSHA", shard.leave_sha, 4, pm, pc, ps,
                                   self.keys.memberships(self.inst), peer_id,
                                   self.keys.channel(app_id, channel),
                                   membership(app_id, channel, peer_id)),
                           self._left_reporter(app_id, channel, peer_id))
        if last and held is not None:
            self._release(held)

    def _left_reporter(self, app_id: str, channel: str,
                       peer: str) -> Callable[[_Result], None] | None:
        """The callback that tells the observer when this leave made the peer absent."""
        if self.observer is None:
            return None

        def report(res: _Result) -> None:
            self._report_left(app_id, channel, peer, res)

        return report

    def _report_left(self, app_id: str, channel: str, peer: str, res: _Result) -> None:
        observer = self.observer
        if observer is None or isinstance(res, BaseException) or int(res[0]) < 2:
            return
        observer.left(app_id, channel, peer, bytes(res[2]), int(res[1]), int(res[0]) == 3)

    def _hold(self, app_id: str, channel: str) -> _Held:
        key = (app_id, channel)
        held = self._views.get(key)
        if held is None:
            shard = self._shard(app_id, channel)
            rch = self.keys.channel(app_id, channel)
            self._routes[rch] = ("c", app_id, channel)
            held = _Held(app_id, channel, rch, shard, self.keys.presence(app_id, channel),
                         self._subscribe(shard, rch))
            self._views[key] = held
            ready = held

            def on_ready(f: asyncio.Future[None]) -> None:
                self._channel_ready(ready, f)

            held.ready.add_done_callback(on_ready)
        return held

    def _channel_ready(self, held: _Held, f: asyncio.Future[None]) -> None:
        if f.cancelled() or self._views.get((held.app_id, held.channel)) is not held:
            for _, _, _, fut in held.deferred:
                if fut is not None:
                    fut.cancel()
            held.deferred.clear()
            return
        self._flush_deferred(held)

    def _flush_deferred(self, held: _Held) -> None:
        deferred, held.deferred = held.deferred, []
        shard = held.shard
        pm, pc, ps = held.keys
        for kind, peer, entry, fut in deferred:
            if kind == "join":
                assert fut is not None
                self._send_join(held, peer, entry, fut)
            else:
                self._send(shard, ("EVALSHA", shard.leave_sha, 4, pm, pc, ps,
                                   self.keys.memberships(self.inst), peer, held.rch,
                                   membership(held.app_id, held.channel, peer)),
                           self._left_reporter(held.app_id, held.channel, peer))

    def _send_join(self, held: _Held, peer: str, entry: bytes,
                   fut: asyncio.Future[None]) -> None:
        shard = held.shard
        pm, pc, ps = held.keys
        snapshot = held.view.loading

        def joined(res: _Result) -> None:
            observer = self.observer
            if observer is not None and not isinstance(res, BaseException) and int(res[2]):
                # Reported even if this node stopped following the channel meanwhile: the
                # transition happened in Redis, and only this node was told.
                observer.joined(held.app_id, held.channel, peer, entry, int(res[3]),
                                int(res[2]) == 2)
            if isinstance(res, BaseException) or self._views.get(
                    (held.app_id, held.channel)) is not held:
                fut.cancel()
                return
            seq = int(res[0])
            if snapshot and held.view.loading and not held.reloading:
                flat = res[1]
                members = {flat[i].decode(): bytes(flat[i + 1])
                           for i in range(0, len(flat), 2)}
                self._changed(held, held.view.load(seq, members))
            held.waiters.append((seq, fut))
            self._check_waiters(held)
            if not fut.done():
                # The events up to our own are on their way on the subscription; should
                # they not come (a lost message), read the channel again.
                asyncio.get_running_loop().call_later(
                    self.command_timeout / 3, self._overdue, held, seq)

        self._send(shard, ("EVALSHA", shard.join_sha, 4, pm, pc, ps,
                           self.keys.memberships(self.inst), peer, entry, held.rch,
                           membership(held.app_id, held.channel, peer),
                           "1" if snapshot else "0"), joined)

    def _overdue(self, held: _Held, seq: int) -> None:
        if self._views.get((held.app_id, held.channel)) is held and not held.view.reached(seq):
            self._reload(held)

    def _release(self, held: _Held) -> None:
        """The node holds no member of the channel any more: stop following it."""
        key = (held.app_id, held.channel)
        if self._views.get(key) is not held:
            return
        self._forget_view(key)
        self._routes.pop(held.rch, None)
        if self._live:
            self._unsubscribe(held.shard, held.rch)

    def _forget_view(self, key: tuple[str, str]) -> None:
        held = self._views.pop(key, None)
        if held is None:
            return
        for _, f in held.waiters:
            f.cancel()
        held.waiters.clear()
        sink = self._sink
        assert sink is not None
        for peer, entry in list(held.view.members.items()):
            sink.remote_presence(held.app_id, held.channel, peer, entry, False)
        held.view.members.clear()

    def peer_connected(self, app_id: str, peer_id: str, online: bool,
                       ) -> asyncio.Future[None] | None:
        key = (app_id, peer_id)
        if not self._live:
            self._peers.pop(key, None)
            if online:
                fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                fut.cancel()
                return fut
            return None
        shard = self._shard(app_id, peer_id)
        rch = self.keys.peer(app_id, peer_id)
        if online:
            self._routes[rch] = ("d", app_id, peer_id)
            ready = self._subscribe(shard, rch)
            self._peers[key] = ready
            return ready
        if self._peers.pop(key, None) is not None:
            self._routes.pop(rch, None)
            gone = self._unsubscribe(shard, rch)
            self._unsubscribing[rch] = gone
            gone.add_done_callback(
                lambda f: self._unsubscribing.pop(rch) if self._unsubscribing.get(rch) is f
                else None)
        return None

    def peer_route(self, app_id: str, peer_id: str) -> asyncio.Future[None] | None:
        ready = self._peers.get((app_id, peer_id))
        return ready if ready is not None and not ready.done() else None

    async def kick(self, app_id: str, peer_id: str, code: int, reason: str,
                   scope: tuple[str, ...] | None = None) -> int:
        if not self._live:
            return 0
        req = next(self._kick_ids)
        kick = _Kick(asyncio.get_running_loop().create_future())
        self._kicks[req] = kick
        key = (app_id, peer_id)

        def published(res: _Result) -> None:
            if isinstance(res, BaseException):
                kick.expected = 0
            else:
                kick.expected = remote_receivers(int(res), key in self._peers)
            kick.check()

        shard = self._shard(app_id, peer_id)
        rch = self.keys.peer(app_id, peer_id)
        args = ("PUBLISH", rch, encode(Kick(self.inst, req, code, reason,
                                            None if scope is None else list(scope))))

        def send(_: object = None) -> None:
            if self._live:
                self._send(shard, args, published)
            else:
                kick.expected = 0
                kick.check()

        self._after_unsubscribed(rch, send)
        try:
            await asyncio.wait_for(asyncio.shield(kick.future), self.kick_timeout)
        except TimeoutError:
            log.warning("kick of %s: %s node(s) did not answer in time", peer_id,
                        "some" if kick.expected is None else kick.expected - kick.answers)
        finally:
            self._kicks.pop(req, None)
        return kick.closed

    def connections_elsewhere(self, app_id: str) -> int:
        return live_total(self._conns.get(app_id, {}), self._live_nodes, self.inst)

    async def members(self, app_id: str, channel: str) -> list[bytes]:
        held = self._views.get((app_id, channel))
        if held is not None and held.view.ready:
            return list(held.view.members.values())
        if not self._live:
            return []
        shard = self._shard(app_id, channel)
        raw = await shard.redis.hgetall(self.keys.presence(app_id, channel)[0])
        return [bytes(v) for v in raw.values()]

    # -- incoming ------------------------------------------------------------------------------

    async def _reader(self, shard: _Shard) -> None:
        ps = shard.pubsub
        try:
            while True:
                msg = await ps.get_message(timeout=None)
                if msg is None:
                    continue
                kind = msg.get("type")
                if kind == "message":
                    self.stats["received"] += 1
                    self._incoming(shard, msg["channel"], msg["data"])
                elif kind == "pmessage":
                    self.stats["received"] += 1
                    self._incoming_followed(msg["pattern"], msg["channel"], msg["data"])
                elif kind in ("subscribe", "unsubscribe", "psubscribe", "punsubscribe"):
                    q = shard.confirms.get(msg["channel"])
                    if q:
                        f = q.popleft()
                        if not q:
                            del shard.confirms[msg["channel"]]
                        if not f.done():
                            f.set_result(None)
        except (RedisError, OSError) as exc:
            self._lost(exc)

    def _incoming_followed(self, pattern: bytes, rch: bytes, data: bytes) -> None:
        """A publish on a channel of an app this node follows for its pattern subscribers."""
        known = self._followed.get(pattern)
        if known is None:
            return  # unfollowed a moment ago
        app_id = known[0]
        name = self.keys.channel_name(app_id, rch)
        if name is None:
            return
        try:
            frame = decode(data)
        except (msgspec.DecodeError, ValueError, TypeError):
            log.warning("dropping an unreadable cluster message")
            return
        # Only publishes: the same Redis channels also carry the channel's presence frames.
        if (isinstance(frame, Message | Posted) and frame.origin != self.inst
                and self._sink is not None):
            self._sink.deliver_pattern_publish(app_id, name, frame.data, frame.sender,
                                               frame.sender_metadata)

    def _incoming(self, shard: _Shard, rch: bytes, data: bytes) -> None:
        try:
            frame = decode(data)
        except (msgspec.DecodeError, ValueError, TypeError):
            log.warning("dropping an unreadable cluster message")
            return
        sink = self._sink
        assert sink is not None
        if isinstance(frame, KickReply):
            kick = self._kicks.get(frame.request)
            if kick is not None:
                kick.closed += frame.closed
                kick.answers += 1
                kick.check()
            return
        route = self._routes.get(rch)
        if route is None:
            return  # a channel given up a moment ago
        _, app_id, name = route
        if isinstance(frame, Message):
            if frame.origin != self.inst:
                sink.deliver_publish(app_id, name, frame.data, frame.sender,
                                     frame.sender_metadata)
        elif isinstance(frame, Posted):
            # This node's own come back too: its opted-in subscribers get them from here,
            # in Redis's order (the others got them at once, when published).
            own = frame.origin == self.inst
            sink.deliver_posted(app_id, name, frame.data, frame.sender, frame.sender_metadata,
                                frame.offset, frame.epoch, frame.skip if own else -1)
        elif isinstance(frame, Join | Leave):
            held = self._views.get((app_id, name))
            if held is None:
                return
            if self._lose_events > 0:
                self._lose_events -= 1
                return
            self._changed(held, held.view.event(frame))
            self._check_waiters(held)
        elif isinstance(frame, Direct):
            if frame.origin != self.inst:
                sink.deliver_direct(app_id, name, frame.data, frame.sender,
                                    frame.sender_metadata)
        elif isinstance(frame, Kick):
            if frame.origin == self.inst:
                return
            n = sink.deliver_disconnect(
                app_id, name, frame.code, frame.reason,
                None if frame.scope is None else tuple(frame.scope))
            if self._live:
                self._send(self._shards[0], ("PUBLISH", self.keys.node(frame.origin),
                                             encode(KickReply(frame.request, n))))

    def _changed(self, held: _Held, changes: Changes) -> None:
        sink = self._sink
        assert sink is not None
        for peer, entry in changes.left:
            sink.remote_presence(held.app_id, held.channel, peer, entry, False)
        for peer, entry in changes.joined:
            sink.remote_presence(held.app_id, held.channel, peer, entry, True)
        if changes.reload:
            self._reload(held)

    def _check_waiters(self, held: _Held) -> None:
        if not held.waiters:
            return
        keep: list[tuple[int, asyncio.Future[None]]] = []
        for seq, f in held.waiters:
            if held.view.reached(seq):
                if not f.done():
                    f.set_result(None)
            elif not f.done():
                keep.append((seq, f))
        held.waiters = keep

    def _reload(self, held: _Held) -> None:
        if held.reloading or not self._live:
            return
        held.reloading = True
        held.view.begin_reload()
        self.stats["reloads"] += 1
        self._spawn(self._reload_task(held))

    async def _reload_task(self, held: _Held) -> None:
        try:
            pipe = held.shard.redis.pipeline(transaction=True)  # one consistent point
            pipe.hgetall(held.keys[0])
            pipe.get(held.keys[2])
            raw, seq = await pipe.execute()
        except (RedisError, OSError) as exc:
            held.reloading = False
            self._lost(exc)
            return
        held.reloading = False
        if self._views.get((held.app_id, held.channel)) is not held:
            return
        members = {k.decode(): bytes(v) for k, v in raw.items()}
        self._changed(held, held.view.load(int(seq or 0), members))
        self._check_waiters(held)

    # -- heartbeat and failure detection ------------------------------------------------------

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                # cancellation that lands as the inner call finishes, and this loop would
                # then outlive stop() (which awaits it: a hang).
                async with asyncio.timeout(self.command_timeout):
                    await self._beat()
            except TimeoutError:
                # asyncio's TimeoutError carries no text: say what took too long.
                self._lost(f"a heartbeat round took longer than the {self.command_timeout:g} s"
                           " command timeout")
                return
            except (RedisError, OSError, _Lost) as exc:
                self._lost(exc)
                return

    async def _beat(self) -> None:
        shard0 = self._shards[0]
        r = shard0.redis
        assert self._sink is not None
        conns = self._sink.local_connections()
        pipe = r.pipeline(transaction=False)
        pipe.eval(_BEAT, 1, self.keys.nodes, self.inst, self._ttl_ms, "0")
        for app_id in set(conns) | self._reported:
            pipe.hset(self.keys.conns(app_id), self.inst, conns.get(app_id, 0))
            pipe.sadd(self.keys.conn_apps, app_id)
        pipe.smembers(self.keys.conn_apps)
        res = await pipe.execute()
        self._reported = set(conns)
        previous, live, gone = res[0]
        if not previous:
            # Our entry expired (a stall, or Redis lost its data): the others may have
            # reaped us already. Start over as a new instance.
            self._lost("this node's heartbeat entry had expired")
            raise _Lost("expired")
        self._live_nodes = {m.decode() for m in live}
        expired = [m.decode() for m in gone]
        apps = sorted(m.decode() for m in res[-1])
        if apps:
            pipe = r.pipeline(transaction=False)
            for app_id in apps:
                pipe.hgetall(self.keys.conns(app_id))
            counts = await pipe.execute()
            self._conns = {app_id: {k.decode(): int(v) for k, v in c.items()}
                           for app_id, c in zip(apps, counts, strict=True)}
        for inst in expired:
            if inst != self.inst and inst not in self._reaping:
                self._spawn(self._reap(inst, claim=True))
        await self._check_views()

    async def _check_views(self) -> None:
        """Anti-entropy: a view whose channel moved on in Redis while its stream stayed
        silent (a lost message) is read again, at its second check behind."""
        by_shard: dict[int, list[_Held]] = {}
        for held in self._views.values():
            if held.view.ready and not held.reloading:
                by_shard.setdefault(held.shard.index, []).append(held)
        for index, helds in by_shard.items():
            seqs = await self._shards[index].redis.mget([h.keys[2] for h in helds])
            for held, raw in zip(helds, seqs, strict=True):
                seq = int(raw or 0)
                current = held.view.seq or 0
                if seq > current:
                    if held.behind == current:
                        self._reload(held)
                    held.behind = current
                else:
                    held.behind = None

    async def _reap(self, inst: str, claim: bool) -> None:
        """Leave every membership of ``inst`` (a dead node, or this one saying goodbye)."""
        self._reaping.add(inst)
        try:
            r0 = self._shards[0].redis
            if claim and not await r0.set(self.keys.reap(inst), self.inst, nx=True,
                                          ex=max(5, int(self.presence_ttl * 3))):
                return  # another survivor has it
            if claim:
                log.warning("node %s stopped heartbeating; its members leave", inst)
            nm = self.keys.memberships(inst)
            for shard in self._shards:
                while True:
                    chunk = await shard.redis.srandmember(nm, 200)
                    if not chunk:
                        break
                    pipe = shard.redis.pipeline(transaction=False)
                    left: list[tuple[str, str, str]] = []
                    for raw in chunk:
                        app_id, channel, peer = parse_membership(raw.decode())
                        left.append((app_id, channel, peer))
                        pm, pc, ps = self.keys.presence(app_id, channel)
                        pipe.evalsha(shard.leave_sha, 4, pm, pc, ps, nm, peer,
                                     self.keys.channel(app_id, channel), raw)
                    results = await pipe.execute()
                    # The reaper's script made these transitions: it reports them.
                    for (app_id, channel, peer), res in zip(left, results, strict=True):
                        self._report_left(app_id, channel, peer, res)
            pipe = r0.pipeline(transaction=False)
            pipe.zrem(self.keys.nodes, inst)
            pipe.smembers(self.keys.conn_apps)
            apps = (await pipe.execute())[1]
            if apps:
                pipe = r0.pipeline(transaction=False)
                for app_id in apps:
                    pipe.hdel(self.keys.conns(app_id.decode()), inst)
                await pipe.execute()
            if claim:
                self.stats["reaped"] += 1
        except (RedisError, OSError) as exc:
            if claim:
                self._lost(exc)
            else:
                raise
        finally:
            self._reaping.discard(inst)

    # -- tasks -----------------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(self._forget_task)
        return task

    def _forget_task(self, task: asyncio.Task[None]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)

    # -- what tests (and operators) may look at and do -------------------------------------------

    def nodes(self) -> list[str]:
        """Instance ids of the other live nodes (as of the last heartbeat)."""
        return sorted(self._live_nodes - {self.inst})

    def channels_held(self) -> list[tuple[str, str]]:
        """The channels this node follows (holds local members of)."""
        return sorted(self._views)

    async def crash(self) -> None:
        """Test hook: stop every task and drop the connections without a goodbye, as a node
        that died would (its entry expires and a survivor reaps it)."""
        self._stopping = True
        self._live = False
        await self._cancel_tasks()
        await self._close_clients()

    def pause_heartbeat(self) -> None:
        """Test hook: stop heartbeating (a stalled or partitioned node)."""
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            self._heartbeat_task = None

    def resume_heartbeat(self) -> None:
        """Test hook: heartbeat again."""
        if self._heartbeat_task is None and self._live:
            self._heartbeat_task = self._spawn(self._heartbeat())

    def lose_events(self, count: int) -> None:
        """Test hook: drop the next ``count`` presence events on arrival, as a dropped
        subscription would."""
        self._lose_events = count

    # -- cluster-wide usage (quota) -------------------------------------------------------------

    async def _usage_loop(self) -> None:
        while True:
            await asyncio.sleep(self.usage_sync_interval)
            try:
                async with asyncio.timeout(self.command_timeout):  # see _heartbeat
                    await self.sync_usage()
            except (RedisError, OSError, TimeoutError) as exc:
                self._lost(exc or "usage sync timed out")
                return

    async def sync_usage(self) -> None:
        """Add this node's new message counts to the cluster's counters and take the cluster
        totals back, so quotas hold across nodes (within one sync interval). Serialised: two
        rounds in flight at once would both send the counts since the same base (counted
        twice)."""
        async with self._usage_lock:
            await self._sync_usage_round()

    async def _sync_usage_round(self) -> None:
        meter = self.usage
        if meter is None or not self._shards:
            return
        r = self._shards[0].redis
        apps = list(meter.apps.items())
        if not apps or r is None:
            return
        pipe = r.pipeline(transaction=False)
        sent: list[tuple[str, int, int]] = []
        for app_id, u in apps:
            k = (app_id, u.period_start)
            base = self._usage_sent.get(k, 0)
            pipe.eval(_USAGE, 1, self.keys.usage(app_id, u.period_start), u.messages - base,
                      u.messages, u.period_end + 86_400 * 31)
            sent.append((app_id, u.period_start, u.messages))
        res = await pipe.execute()
        for (app_id, period, counted), value in zip(sent, res, strict=True):
            total = int(value)
            now = meter.apps.get(app_id)
            if now is None or now.period_start != period:
                continue
            grown = now.messages - counted
            now.messages = total + grown
            self._usage_sent[(app_id, period)] = total

    async def refresh_counts(self) -> None:
        """Run one heartbeat now (tests: connection counts without waiting for the timer)."""
        if self._live:
            await self._beat()
