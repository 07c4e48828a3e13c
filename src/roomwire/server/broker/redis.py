"""The cluster broker: nodes that share one Redis (pub/sub for routing, keys for state).

How it works (docs/cluster.md has the long version):

* **One pub/sub connection per node**, subscribed to two Redis channels: the cluster bus
  ``<prefix>bus`` (presence, peer directory, heartbeats: every node needs them) and the node's
  own ``<prefix>n:<instance>`` (messages, direct messages and kicks addressed to it).
* **A replica of the cluster per node.** Each node keeps every other node's presence entries
  and online peers (``_NodeView``), fed in order from the bus, and feeds the hub's
  ``Room.remote`` counts from it. So ``subscribe`` stays synchronous and the ordering rules of
  docs/protocol.md#presence-ordering hold as on one node; a publish goes only to the nodes that
  have members in the channel, a direct message only to the nodes that hold the peer.
* **Batching.** Events are queued synchronously and one writer task sends everything queued
  since its last round in one pipeline: the state writes first, then one ``PUBLISH`` per
  destination carrying every frame for it (msgpack). Order is kept per destination and
  between the bus and a node channel. Nothing is ever retransmitted, so no socket gets a
  message twice.
* **State in Redis, with sequence numbers.** Each node mirrors its presence and peers in the
  hash ``<prefix>st:<instance>`` (with a ``seq`` field); every bus event carries the next
  ``seq``. A node that sees a gap, a heartbeat whose ``seq`` it has not reached, an unknown node
  or a ``reset`` reloads that node's hash and applies the difference (anti-entropy: replicas
  that disagree after a partition converge within one heartbeat).
* **Failure.** Each node refreshes ``<prefix>hb:<instance>`` (TTL ``presence_ttl``) every
  ``heartbeat_interval``. A node whose key expired is dropped by the others (its members are
  ``left``) and its state is deleted (atomically, only while its key is still missing). A node
  that loses Redis reports itself unhealthy (going_away and close 1001 to its sockets, refused
  upgrades), reconnects on its own with a new instance id and announces itself again.
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
from collections.abc import Coroutine, Iterable
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

log = logging.getLogger("roomwire.broker.redis")

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode

_SEQ = b"seq"

# Delete a dead node's state only while its heartbeat key is still missing, so a node that
# comes back at the same moment never loses the state it just wrote.
_REAP = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2])
  redis.call('SREM', KEYS[3], ARGV[1])
  return 1
end
return 0
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

_Event = list[Any]


def _raw(data: bytes) -> bytes:
    return data if type(data) is bytes else bytes(data)
_PresenceKey = tuple[str, str, str]


@dataclass
class _NodeView:
    """What this node knows of another node."""

    inst: str
    seq: int = 0
    presence: dict[_PresenceKey, bytes] = field(default_factory=dict)
    peers: set[tuple[str, str]] = field(default_factory=set)
    conns: dict[str, int] = field(default_factory=dict)
    buffer: list[_Event] | None = None
    """Events held back while the node's state is being reloaded (None: not holding)."""
    resyncing: bool = False
    again: bool = False


@dataclass
class _Kick:
    future: asyncio.Future[None]
    waiting: int
    closed: int = 0


class RedisBroker(Broker):
    """A node of a cluster sharing one Redis."""

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
        self.url = url
        self.prefix = prefix
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
        self._redis: aioredis.Redis | None = None
        self._pubsub: Any = None
        self._live = False
        self._stopping = False
        self._seq = 0
        self._nodes: dict[str, _NodeView] = {}
        self._room_nodes: dict[tuple[str, str], dict[str, int]] = {}
        self._peer_nodes: dict[tuple[str, str], set[str]] = {}
        # Outgoing, since the writer's last round.
        self._ops: list[tuple[bool, bytes, bytes]] = []
        self._groups: list[tuple[bytes, list[_Event]]] = []
        self._bus_group = -1
        self._node_group: dict[bytes, int] = {}
        self._reset = False
        self._dirty = asyncio.Event()
        self._idle = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._recover_task: asyncio.Task[None] | None = None
        self._kicks: dict[int, _Kick] = {}
        self._kick_ids = itertools.count(1)
        self._usage_sent: dict[tuple[str, int], int] = {}
        self._usage_lock = asyncio.Lock()
        self.stats = {"published": 0, "received": 0, "resyncs": 0, "reaped": 0, "lost": 0}

    # -- keys ----------------------------------------------------------------------------------

    @property
    def _bus(self) -> bytes:
        return (self.prefix + "bus").encode()

    def _node_channel(self, inst: str) -> bytes:
        return (self.prefix + "n:" + inst).encode()

    def _hb_key(self, inst: str) -> str:
        return self.prefix + "hb:" + inst

    def _state_key(self, inst: str) -> str:
        return self.prefix + "st:" + inst

    @property
    def _nodes_key(self) -> str:
        return self.prefix + "nodes"

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, sink: ClusterSink) -> None:
        self._sink = sink
        if self.usage is not None:
            # Counts restored from the store are already in the cluster's counters.
            for app_id, u in self.usage.apps.items():
                self._usage_sent[(app_id, u.period_start)] = u.messages
        try:
            await self._connect()
        except (RedisError, OSError) as exc:
            await self._close_clients()
            raise RuntimeError(f"cannot reach Redis at {self.url}: {exc}") from None

    async def stop(self) -> None:
        """Say goodbye: the other nodes drop this node's members at once."""
        self._stopping = True
        if self._recover_task is not None:
            self._recover_task.cancel()
        if self._live and self._redis is not None:
            # Let the writer send what the closing sockets queued (their `left`s), then go.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained(), self.command_timeout)
            self._live = False
            await self._cancel_tasks()  # no heartbeat may land after the goodbye
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await asyncio.wait_for(self._goodbye(self.inst), self.command_timeout)
        self._live = False
        await self._cancel_tasks()
        await self._close_clients()
        self.healthy = False

    async def _drained(self) -> None:
        while self._ops or self._groups or not self._idle.is_set():
            self._idle.clear()
            self._dirty.set()
            await self._idle.wait()

    async def _goodbye(self, inst: str) -> None:
        assert self._redis is not None
        pipe = self._redis.pipeline(transaction=False)
        pipe.delete(self._state_key(inst), self._hb_key(inst))
        pipe.srem(self._nodes_key, inst)
        pipe.publish(self._bus, _encode([inst, [["b"]]]))
        await pipe.execute()

    async def _connect(self) -> None:
        """Connect, subscribe, announce this node and load every other node's state."""
        self._redis = aioredis.Redis.from_url(
            self.url, socket_timeout=self.command_timeout,
            socket_connect_timeout=self.command_timeout, retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        await self._redis.ping()
        self.inst = f"{self.node_id}.{secrets.token_hex(4)}"
        self._seq = 0
        self._pubsub = self._redis.pubsub()
        await self._pubsub.subscribe(self._bus, self._node_channel(self.inst))
        confirmed = 0
        deadline = time.monotonic() + self.command_timeout
        while confirmed < 2:
            if time.monotonic() > deadline:
                raise RedisError("no subscription confirmation from Redis")
            msg = await self._pubsub.get_message(timeout=self.command_timeout)
            if msg is not None and msg.get("type") == "subscribe":
                confirmed += 1
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(self._hb_key(self.inst), b"1", px=int(self.presence_ttl * 1000))
        pipe.sadd(self._nodes_key, self.inst)
        pipe.smembers(self._nodes_key)
        members = (await pipe.execute())[2]
        self._live = True
        self._reset = True  # the writer writes the full state and tells the others
        self._idle.set()
        self._spawn(self._reader())
        self._spawn(self._writer())
        self._spawn(self._heartbeat())
        if self.usage is not None:
            self._spawn(self._usage_loop())
        self._dirty.set()
        others = {m.decode() for m in members} - {self.inst}
        loading = [t for t in (self._spawn_resync(inst) for inst in others) if t is not None]
        if loading:
            await asyncio.wait(loading, timeout=self.command_timeout)
        self.healthy = True
        log.info("joined the cluster as %s (%d other nodes)", self.inst, len(self._nodes))

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
        ps, r = self._pubsub, self._redis
        self._pubsub = None
        self._redis = None
        if ps is not None:
            with contextlib.suppress(Exception):
                await ps.aclose()
        if r is not None:
            with contextlib.suppress(Exception):
                await r.aclose()

    def _lost(self, exc: BaseException | str) -> None:
        """Redis is unreachable: report unhealthy, forget the cluster, reconnect in the
        background."""
        if not self._live or self._stopping:
            return
        log.warning("lost Redis (%s); closing this node's sockets until it is back", exc)
        self.stats["lost"] += 1
        self._live = False
        self.healthy = False
        self._ops.clear()
        self._groups.clear()
        self._bus_group = -1
        self._node_group.clear()
        for kick in self._kicks.values():
            if not kick.future.done():
                kick.future.set_result(None)
        if self.health_listener is not None:
            self.health_listener(False)
        for inst in list(self._nodes):
            self._drop(inst)
        self._recover_task = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        old = self.inst
        await self._cancel_tasks()
        await self._close_clients()
        delay = 0.05
        while not self._stopping:
            try:
                await self._connect()
                break
            except (RedisError, OSError) as exc:
                log.debug("Redis still unreachable: %s", exc)
                self._live = False
                await self._cancel_tasks()
                await self._close_clients()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        if self._stopping:
            return
        with contextlib.suppress(RedisError, OSError):
            await self._goodbye(old)
        log.info("Redis is back; this node accepts sockets again")
        if self.health_listener is not None:
            self.health_listener(True)

    # -- outgoing ------------------------------------------------------------------------------

    def _to_bus(self, ev: _Event) -> None:
        g = self._groups
        if g and self._bus_group == len(g) - 1:
            g[-1][1].append(ev)
        else:
            g.append((self._bus, [ev]))
            self._bus_group = len(g) - 1
        self._dirty.set()

    def _to_node(self, inst: str, ev: _Event) -> None:
        ch = self._node_channel(inst)
        g = self._groups
        i = self._node_group.get(ch, -1)
        if i > self._bus_group:
            g[i][1].append(ev)
        else:
            g.append((ch, [ev]))
            self._node_group[ch] = len(g) - 1
        self._dirty.set()

    def publish(self, app_id: str, channel: str, data: bytes, sender_json: bytes,
                sender_metadata: bytes | None) -> None:
        if not self._live:
            return
        nodes = self._room_nodes.get((app_id, channel))
        if not nodes:
            return
        # The session hands ``data`` over as msgspec.Raw, which msgpack would embed verbatim.
        ev: _Event = ["m", app_id, channel, _raw(data), sender_json, sender_metadata]
        for inst in nodes:
            self._to_node(inst, ev)

    def direct(self, app_id: str, peer_id: str, data: bytes, sender_json: bytes,
               sender_metadata: bytes | None) -> None:
        if not self._live:
            return
        nodes = self._peer_nodes.get((app_id, peer_id))
        if not nodes:
            return
        ev: _Event = ["d", app_id, peer_id, _raw(data), sender_json, sender_metadata]
        for inst in nodes:
            self._to_node(inst, ev)

    def presence(self, app_id: str, channel: str, peer_id: str, entry: bytes,
                 present: bool) -> None:
        if not self._live:
            return
        self._seq += 1
        self._ops.append((present, _encode(["p", app_id, channel, peer_id]), entry))
        self._to_bus(["p", self._seq, app_id, channel, peer_id,
                      entry if present else None, present])

    def peer_connected(self, app_id: str, peer_id: str, online: bool) -> None:
        if not self._live:
            return
        self._seq += 1
        self._ops.append((online, _encode(["c", app_id, peer_id]), b"1"))
        self._to_bus(["c", self._seq, app_id, peer_id, online])

    def peer_online_elsewhere(self, app_id: str, peer_id: str) -> bool:
        return bool(self._peer_nodes.get((app_id, peer_id)))

    async def kick(self, app_id: str, peer_id: str, code: int, reason: str,
                   scope: tuple[str, ...] | None = None) -> int:
        nodes = self._peer_nodes.get((app_id, peer_id))
        if not self._live or not nodes:
            return 0
        req = next(self._kick_ids)
        kick = _Kick(asyncio.get_running_loop().create_future(), len(nodes))
        self._kicks[req] = kick
        for inst in list(nodes):
            self._to_node(inst, ["k", app_id, peer_id, code, reason, req,
                                 None if scope is None else list(scope)])
        try:
            await asyncio.wait_for(asyncio.shield(kick.future), self.kick_timeout)
        except TimeoutError:
            log.warning("kick of %s: %d node(s) did not answer in time", peer_id, kick.waiting)
        finally:
            self._kicks.pop(req, None)
        return kick.closed

    def connections_elsewhere(self, app_id: str) -> int:
        return sum(v.conns.get(app_id, 0) for v in self._nodes.values())

    def cluster_nodes(self) -> list[str]:
        """Instance ids of the other live nodes this node knows."""
        return sorted(self._nodes)

    async def _writer(self) -> None:
        """Send everything queued since the last round: state writes, then the frames."""
        while True:
            if not self._ops and not self._groups and not self._reset:
                self._idle.set()
                await self._dirty.wait()
            self._dirty.clear()
            self._idle.clear()
            try:
                await self._write_round()
            except (RedisError, OSError) as exc:
                self._lost(exc)
                return

    async def _write_round(self) -> None:
        r = self._redis
        assert r is not None and self._sink is not None
        ops, groups = self._ops, self._groups
        self._ops, self._groups = [], []
        self._bus_group = -1
        self._node_group = {}
        st = self._state_key(self.inst)
        pipe = r.pipeline(transaction=False)
        if self._reset:
            # Announce the whole state again (start, or the heartbeat found it gone).
            self._reset = False
            ops = []
            self._seq += 1
            presence, peers = self._sink.local_state()
            mapping: dict[bytes, bytes] = {_SEQ: str(self._seq).encode()}
            for app_id, channel, peer, entry in presence:
                mapping[_encode(["p", app_id, channel, peer])] = entry
            for app_id, peer in peers:
                mapping[_encode(["c", app_id, peer])] = b"1"
            pipe.delete(st)
            pipe.hset(st, mapping=mapping)  # type: ignore[arg-type]
            pipe.pexpire(st, int(self.presence_ttl * 3000))
            pipe.set(self._hb_key(self.inst), b"1", px=int(self.presence_ttl * 1000))
            pipe.sadd(self._nodes_key, self.inst)
            groups.insert(0, (self._bus, [["r", self._seq]]))
        elif ops:
            for present, f, value in ops:
                if present:
                    pipe.hset(st, f, value)
                else:
                    pipe.hdel(st, f)
            pipe.hset(st, _SEQ, str(self._seq).encode())
        inst = self.inst
        for ch, events in groups:
            pipe.publish(ch, _encode([inst, events]))
        self.stats["published"] += len(groups)
        await pipe.execute()

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
            except (RedisError, OSError, TimeoutError) as exc:
                self._lost(exc or "heartbeat timed out")
                return

    async def _beat(self) -> None:
        r = self._redis
        assert r is not None and self._sink is not None
        ttl_ms = int(self.presence_ttl * 1000)
        pipe = r.pipeline(transaction=False)
        pipe.exists(self._hb_key(self.inst))
        pipe.set(self._hb_key(self.inst), b"1", px=ttl_ms)
        pipe.pexpire(self._state_key(self.inst), ttl_ms * 3)
        pipe.sadd(self._nodes_key, self.inst)
        pipe.smembers(self._nodes_key)
        res = await pipe.execute()
        if not res[0] and not self._reset:
            # Our key had expired (a long stall, or Redis lost its data): the others may have
            # dropped us. Write the whole state again and tell them to reload it.
            log.warning("this node's heartbeat key had expired; announcing its state again")
            self._reset = True
            self._dirty.set()
        self._to_bus(["h", self._seq, self._sink.local_connections()])
        known = {m.decode() for m in res[4]} | set(self._nodes)
        known.discard(self.inst)
        if not known:
            return
        order = sorted(known)
        pipe = r.pipeline(transaction=False)
        for inst in order:
            pipe.exists(self._hb_key(inst))
        alive = await pipe.execute()
        for inst, ok in zip(order, alive, strict=True):
            if ok:
                if inst not in self._nodes:
                    self._spawn_resync(inst)
                continue
            reaped = await r.eval(_REAP, 3, self._hb_key(inst), self._state_key(inst),
                                  self._nodes_key, inst)
            if reaped:
                self.stats["reaped"] += 1
            if inst in self._nodes:
                log.warning("node %s stopped heartbeating; dropping its members", inst)
                self._drop(inst)

    # -- incoming ------------------------------------------------------------------------------

    async def _reader(self) -> None:
        ps = self._pubsub
        assert ps is not None
        try:
            while True:
                msg = await ps.get_message(ignore_subscribe_messages=True, timeout=None)
                if msg is None or msg.get("type") != "message":
                    continue
                self.stats["received"] += 1
                try:
                    origin, events = _decode(msg["data"])
                except (msgspec.DecodeError, ValueError, TypeError):
                    log.warning("dropping an unreadable cluster message")
                    continue
                if origin != self.inst:
                    self._apply(origin, events)
        except (RedisError, OSError) as exc:
            self._lost(exc)

    def _apply(self, origin: str, events: Iterable[_Event]) -> None:
        sink = self._sink
        assert sink is not None
        for ev in events:
            kind = ev[0]
            if kind == "m":
                sink.deliver_publish(ev[1], ev[2], ev[3], ev[4], ev[5])
            elif kind == "d":
                sink.deliver_direct(ev[1], ev[2], ev[3], ev[4], ev[5])
            elif kind == "k":
                # A 7th element (the kicking key's patterns) may be absent: older nodes.
                scope = ev[6] if len(ev) > 6 else None
                n = sink.deliver_disconnect(
                    ev[1], ev[2], ev[3], ev[4],
                    None if scope is None else tuple(str(p) for p in scope))
                if ev[5] and self._live:
                    self._to_node(origin, ["kr", ev[5], n])
            elif kind == "kr":
                kick = self._kicks.get(ev[1])
                if kick is not None:
                    kick.closed += ev[2]
                    kick.waiting -= 1
                    if kick.waiting <= 0 and not kick.future.done():
                        kick.future.set_result(None)
            else:
                self._control(origin, ev)

    def _control(self, origin: str, ev: _Event) -> None:
        """Bus events that change the replica, applied in ``seq`` order."""
        kind = ev[0]
        view = self._nodes.get(origin)
        if kind == "b":
            if view is not None:
                self._drop(origin)
            return
        if view is None:
            view = self._nodes[origin] = _NodeView(origin)
            self._spawn_resync(origin, view)
        if view.buffer is not None:
            view.buffer.append(ev)
            return
        if kind == "r":
            self._spawn_resync(origin, view)
            return
        seq = ev[1]
        if kind == "h":
            view.conns = ev[2]
            if seq > view.seq:
                # Events up to `seq` were sent before this heartbeat; some never arrived.
                self._spawn_resync(origin, view)
            return
        if seq <= view.seq:
            return
        if seq != view.seq + 1:
            self._spawn_resync(origin, view)
            self._hold(view, ev)
            return
        view.seq = seq
        if kind == "p":
            key = (ev[2], ev[3], ev[4])
            if ev[6]:
                self._add_presence(view, key, ev[5])
            else:
                self._remove_presence(view, key)
        elif kind == "c":
            if ev[4]:
                self._add_peer(view, (ev[2], ev[3]))
            else:
                self._remove_peer(view, (ev[2], ev[3]))

    # -- replica -------------------------------------------------------------------------------

    def _add_presence(self, view: _NodeView, key: _PresenceKey, entry: bytes) -> None:
        if key in view.presence:
            view.presence[key] = entry
            return
        view.presence[key] = entry
        room = (key[0], key[1])
        nodes = self._room_nodes.get(room)
        if nodes is None:
            nodes = self._room_nodes[room] = {}
        nodes[view.inst] = nodes.get(view.inst, 0) + 1
        assert self._sink is not None
        self._sink.remote_presence(key[0], key[1], key[2], entry, True)

    def _remove_presence(self, view: _NodeView, key: _PresenceKey) -> None:
        entry = view.presence.pop(key, None)
        if entry is None:
            return
        room = (key[0], key[1])
        nodes = self._room_nodes.get(room)
        if nodes is not None:
            left = nodes.get(view.inst, 0) - 1
            if left > 0:
                nodes[view.inst] = left
            else:
                nodes.pop(view.inst, None)
                if not nodes:
                    del self._room_nodes[room]
        assert self._sink is not None
        self._sink.remote_presence(key[0], key[1], key[2], entry, False)

    def _add_peer(self, view: _NodeView, key: tuple[str, str]) -> None:
        if key in view.peers:
            return
        view.peers.add(key)
        self._peer_nodes.setdefault(key, set()).add(view.inst)

    def _remove_peer(self, view: _NodeView, key: tuple[str, str]) -> None:
        if key not in view.peers:
            return
        view.peers.discard(key)
        nodes = self._peer_nodes.get(key)
        if nodes is not None:
            nodes.discard(view.inst)
            if not nodes:
                del self._peer_nodes[key]

    def _drop(self, inst: str) -> None:
        """Forget a node: its members leave (others hear ``left`` where it was the last)."""
        view = self._nodes.pop(inst, None)
        if view is None:
            return
        for key in list(view.presence):
            self._remove_presence(view, key)
        for peer in list(view.peers):
            self._remove_peer(view, peer)

    @staticmethod
    def _hold(view: _NodeView, ev: _Event) -> None:
        if view.buffer is not None:
            view.buffer.append(ev)

    def _spawn_resync(self, inst: str, view: _NodeView | None = None,
                      ) -> asyncio.Task[None] | None:
        if view is None:
            view = self._nodes.get(inst)
            if view is None:
                view = self._nodes[inst] = _NodeView(inst)
        if view.buffer is None:
            view.buffer = []
        if view.resyncing:
            view.again = True
            return None
        view.resyncing = True
        return self._spawn(self._resync(inst, view))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(self._forget_task)
        return task

    def _forget_task(self, task: asyncio.Task[None]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)

    async def _resync(self, inst: str, view: _NodeView) -> None:
        """Reload ``inst``'s state from Redis and apply the difference to the replica. Its bus
        events are held back meanwhile and replayed after (those the state already covers, by
        ``seq``, are skipped)."""
        try:
            await self._resync_rounds(inst, view)
        finally:
            view.resyncing = False

    async def _resync_rounds(self, inst: str, view: _NodeView) -> None:
        r = self._redis
        assert r is not None
        while True:
            self.stats["resyncs"] += 1
            view.again = False
            if view.buffer is None:
                view.buffer = []
            try:
                pipe = r.pipeline(transaction=False)
                pipe.hgetall(self._state_key(inst))
                pipe.exists(self._hb_key(inst))
                raw, alive = await pipe.execute()
            except (RedisError, OSError) as exc:
                self._lost(exc)
                return
            if self._nodes.get(inst) is not view:
                return  # dropped meanwhile (goodbye, or declared dead)
            if not alive and not raw:
                self._drop(inst)
                return
            seq = 0
            presence: dict[_PresenceKey, bytes] = {}
            peers: set[tuple[str, str]] = set()
            for f, value in raw.items():
                if f == _SEQ:
                    seq = int(value)
                    continue
                parts = _decode(f)
                if parts[0] == "p":
                    presence[(parts[1], parts[2], parts[3])] = value
                elif parts[0] == "c":
                    peers.add((parts[1], parts[2]))
            for key in [k for k in view.presence if k not in presence]:
                self._remove_presence(view, key)
            for key, entry in presence.items():
                self._add_presence(view, key, entry)
            for p in [p for p in view.peers if p not in peers]:
                self._remove_peer(view, p)
            for p in peers:
                self._add_peer(view, p)
            view.seq = seq
            held, view.buffer = view.buffer, None
            for n, ev in enumerate(held):
                self._control(inst, ev)
                if view.buffer is not None:
                    # A gap again: hold the rest for the next round.
                    view.buffer.extend(held[n + 1:])
                    break
            if view.buffer is None and not view.again:
                return

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
        meter, r = self.usage, self._redis
        if meter is None or r is None:
            return
        apps = list(meter.apps.items())
        if not apps:
            return
        pipe = r.pipeline(transaction=False)
        sent: list[tuple[str, int, int]] = []
        for app_id, u in apps:
            k = (app_id, u.period_start)
            base = self._usage_sent.get(k, 0)
            key = f"{self.prefix}usage:{app_id}:{u.period_start}"
            pipe.eval(_USAGE, 1, key, u.messages - base, u.messages,
                      u.period_end + 86_400 * 31)
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
