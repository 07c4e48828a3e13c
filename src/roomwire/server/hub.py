"""The hub: channels, subscriptions, presence and the peer directory of one node.

Plain synchronous logic over ``Link`` objects (a connection as the hub sees it), so every
presence rule is testable without sockets. The ordering guarantees the official clients rely on
(docs/protocol.md, Presence ordering) hold because each call runs to completion on the loop:
``subscribe`` has broadcast the newcomer's ``joined`` before it returns, and the caller then
sends the ack and the snapshot.

In a cluster (``broker.clustered``) presence is cluster-wide and lives in Redis: a node's first
local holder of a peer in a channel *joins* through the broker, and the subscribe completes
(``subscribe`` returns a future) once the broker's view of the channel includes that join, so
the ack and the snapshot still follow the newcomer's ``joined`` everywhere. The view's changes
come back through ``remote_presence``. The single-node paths do not change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from ..protocol import frames
from ..protocol.history import Position, encode_position_suffix
from ..protocol.patterns import is_pattern
from .broker import Broker, PresenceObserver
from .broker.redis_history import ClusterHistory
from .broker.redis_replay import ClusterLedger
from .history import Entry, History, HistoryRead, HistoryRule, Stream, decide, decide_read
from .replay import LOST, Replay, judge
from .wildcards import Wildcards

_perf = time.perf_counter
_SKIPS_MAX = 4096
log = logging.getLogger("roomwire.replay")


class HubCounters(Protocol):
    """What the hub reports while it fans frames out (``metrics.Metrics`` is one)."""

    frames_sent: Counter[str]
    """Frames queued for local sockets, by type (``message``, ``direct``, ``presence``)."""

    def sample_fanout(self) -> bool:
        """Called once per local publish: whether to time this one's fan-out."""
        ...

    def observe_fanout(self, seconds: float) -> None:
        """How long a sampled publish took to reach the local subscribers' queues."""
        ...


class _Uncounted:
    """Counters nobody reads: a hub built without metrics (tests, tools)."""

    def __init__(self) -> None:
        self.frames_sent: Counter[str] = Counter()

    def sample_fanout(self) -> bool:
        return False

    def observe_fanout(self, seconds: float) -> None:
        return None


class HubObserver(PresenceObserver, Protocol):
    """Who hears the hub's lifecycle facts (the webhook service). Called synchronously at
    each transition; a hub without an observer (no webhook configured) pays one attribute
    test per connection change and per publish, nothing more. In a cluster, joins and leaves
    come from the broker instead (``PresenceObserver``), connections and publishes from the
    node that holds the socket."""

    message_apps: frozenset[str]
    """Apps that want ``published`` calls."""

    def connected(self, app_id: str, peer_id: str, metadata: bytes | None,
                  connections: int) -> None: ...

    def disconnected(self, app_id: str, peer_id: str, code: int, reason: str,
                     connections: int) -> None: ...

    def published(self, app_id: str, channel: str, data: bytes, sender_json: bytes) -> None:
        ...


class Link(Protocol):
    """A local connection, as the hub needs it."""

    app_id: str
    peer_id: str
    peer_json: bytes
    peer_metadata: bytes | None
    presence_entry: bytes
    receives_presence: bool
    close_code: int | None
    """How the connection ended, once it has (webhooks' ``peer_disconnected``)."""
    close_reason: str

    def send(self, payload: bytes) -> None:
        """Queue one server frame (JSON bytes)."""

    def send_wire(self, wire: bytes) -> None:
        """Queue an already framed message (the same bytes go to many links)."""

    def close(self, code: int, reason: str) -> None:
        """Close the connection with a WebSocket close code."""


class _Live(NamedTuple):
    """A positioned message that reached a link while its recovery read was out."""

    offset: int
    epoch: str
    data: bytes
    sender_json: bytes
    sender_metadata: bytes | None


@dataclass
class Room:
    """One channel of one app on this node."""

    name: str
    name_json: bytes
    plain: dict[Link, None] = field(default_factory=dict)
    """Subscribers that did not ask for sender metadata (insertion-ordered set)."""
    with_meta: dict[Link, None] = field(default_factory=dict)
    """Subscribers that subscribed with ``includeSenderMetadata``."""
    local: dict[str, int] = field(default_factory=dict)
    """peerId -> number of its local sockets subscribed."""
    remote: dict[str, int] = field(default_factory=dict)
    """Cluster: peerId -> 1 while the broker's view of the channel lists it (the members of
    every node, this one's included)."""
    entries: dict[str, bytes] = field(default_factory=dict)
    """peerId -> encoded presence entry, in join order."""
    held: dict[str, int] = field(default_factory=dict)
    """Cluster: peerId -> local sockets subscribed or subscribing (joins and leaves follow
    its 0 <-> 1 transitions)."""
    pending: dict[Link, bool] = field(default_factory=dict)
    """Cluster: links whose subscribe waits for the broker -> includeSenderMetadata."""
    joining: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    """Cluster: peerId -> its join in flight (later sockets of the peer wait for it too)."""
    positioned: dict[Link, None] = field(default_factory=dict)
    """Subscribers that opted in to roomwire's history extension (they are in ``plain`` or
    ``with_meta`` as well): their messages carry the position."""
    recovering: dict[Link, list[_Live]] = field(default_factory=dict)
    """Cluster: opted-in subscribes (in ``pending``) whose history read is out; the
    positioned messages that arrive meanwhile wait here for the seam."""
    floor: dict[Link, tuple[str, int]] = field(default_factory=dict)
    """Cluster: a recovered link got everything up to this position already: a message at
    or below it still on its way from Redis is not delivered twice."""
    bare: dict[Link, None] = field(default_factory=dict)
    """Cluster: links of ``positioned`` that get today's frames, without the position, yet
    in Redis's order: token identities on a channel the ``replay`` setting covers (so the
    position of the last one is known when they drop, ``seen``), and links that turned
    positions off with a plain re-subscribe (a message of their own node on its way back
    from Redis would otherwise reach them by neither path)."""
    seen: dict[Link, tuple[str, int]] = field(default_factory=dict)
    """Cluster: the position of the last message a ``bare`` link got."""

    def __len__(self) -> int:
        return len(self.plain) + len(self.with_meta)

    def subscribers(self) -> Iterator[Link]:
        yield from self.plain
        yield from self.with_meta

    def has(self, link: Link) -> bool:
        return link in self.plain or link in self.with_meta

    def present(self, peer_id: str) -> bool:
        return self.local.get(peer_id, 0) > 0 or self.remote.get(peer_id, 0) > 0


@dataclass
class Tenant:
    """Everything of one app on this node."""

    rooms: dict[str, Room] = field(default_factory=dict)
    peers: dict[str, dict[Link, None]] = field(default_factory=dict)
    links: int = 0
    wildcards: Wildcards[Link] = field(default_factory=Wildcards[Link])
    """Pattern subscriptions (``wildcards``)."""


class Hub:
    """Routes frames between the links of every app on this node."""

    def __init__(self, wire: Callable[[bytes], bytes], broker: Broker,
                 counters: HubCounters | None = None) -> None:
        self._wire = wire
        self.broker = broker
        self.counters: HubCounters = counters if counters is not None else _Uncounted()
        self.tenants: dict[str, Tenant] = {}
        self._unwelcomed: set[Link] = set()
        """Cluster: links whose welcome waits for the broker; no direct reaches them yet."""
        self.history: History | None = None
        """Channel history (roomwire's extension); None: no channel keeps any."""
        self.clock: Callable[[], float] = time.time
        self.replay_max_bytes: int | None = None
        """A recovery that would replay more than this is refused (``recovered`` false)."""
        self.replay: Replay | None = None
        """Replay of missed broadcasts to token identities (the ``replay`` setting); None:
        no channel has it. Needs ``history``."""
        self.last_stream: Stream | None = None
        """The history stream the latest ``publish`` was recorded in (None: not recorded);
        the session reads it right after publishing, to put the position in its ack."""
        self.observer: HubObserver | None = None
        """Lifecycle facts go here (set while a webhook is configured)."""
        self.cluster_history: ClusterHistory | None = None
        """Cluster: channel history in Redis (``history`` is None then)."""
        self.last_position: asyncio.Future[Position] | None = None
        """Cluster: the position of the latest ``publish`` by an opted-in socket, once Redis
        gave it (None: not recorded, or not asked for)."""
        self._skips: dict[int, Link] = {}
        """Cluster: token -> the opted-in socket that published a message still on its way
        back from Redis (it must not get its own message)."""
        self._skip_ids = 0
        self.cluster_ledger: ClusterLedger | None = None
        """Cluster: the ``replay`` setting's marks, in Redis (``replay.ledger`` is unused)."""
        self._epochs: dict[str, bytes] = {}
        """Epoch -> its JSON, for the positioned messages from Redis."""

    # -- connections ---------------------------------------------------------------------------

    def tenant(self, app_id: str) -> Tenant:
        t = self.tenants.get(app_id)
        if t is None:
            t = self.tenants[app_id] = Tenant()
        return t

    def connections(self, app_id: str) -> int:
        t = self.tenants.get(app_id)
        return t.links if t else 0

    def attach(self, link: Link) -> asyncio.Future[None] | None:
        """A new authenticated connection. In a cluster, returns a future while the node's
        route to the peer is not confirmed yet (the welcome waits for it)."""
        t = self.tenant(link.app_id)
        t.links += 1
        sockets = t.peers.get(link.peer_id)
        ready: asyncio.Future[None] | None = None
        if sockets is None:
            sockets = t.peers[link.peer_id] = {}
            ready = self.broker.peer_connected(link.app_id, link.peer_id, True)
        elif self.broker.clustered:
            ready = self.broker.peer_route(link.app_id, link.peer_id)
        sockets[link] = None
        if ready is not None and not ready.done():
            self._unwelcomed.add(link)
        if self.observer is not None:
            self.observer.connected(link.app_id, link.peer_id, link.peer_metadata, len(sockets))
        return ready

    def welcomed(self, link: Link) -> None:
        """Cluster: the link's welcome is going out now; directs may reach it from here on."""
        self._unwelcomed.discard(link)

    def detach(self, link: Link, channels: list[str]) -> None:
        """A connection is gone: leave its channels, then the peer directory."""
        t = self.tenants.get(link.app_id)
        if t is None:
            return
        for channel in channels:
            self.unsubscribe(link, channel)
        self._unwelcomed.discard(link)
        sockets = t.peers.get(link.peer_id)
        if sockets is not None and link in sockets:
            del sockets[link]
            if self.observer is not None:
                self.observer.disconnected(
                    link.app_id, link.peer_id, link.close_code or 1006, link.close_reason,
                    len(sockets))
            if not sockets:
                del t.peers[link.peer_id]
                self.broker.peer_connected(link.app_id, link.peer_id, False)
        t.links -= 1
        if t.links <= 0 and not t.rooms and not t.peers and not t.wildcards:
            del self.tenants[link.app_id]

    def peer_links(self, app_id: str, peer_id: str) -> list[Link]:
        t = self.tenants.get(app_id)
        if t is None:
            return []
        return list(t.peers.get(peer_id, ()))

    # -- presence ------------------------------------------------------------------------------

    def _room(self, app_id: str, channel: str, create: bool) -> Room | None:
        t = self.tenant(app_id) if create else self.tenants.get(app_id)
        if t is None:
            return None
        room = t.rooms.get(channel)
        if room is None and create:
            room = t.rooms[channel] = Room(channel, frames.encode_json(channel))
        return room

    def _broadcast_presence(self, room: Room, joined: list[bytes], left: list[bytes]) -> int:
        """One presence frame to every subscriber allowed to see presence; returns how many."""
        wire = self._wire(frames.encode_presence(room.name_json, joined, left))
        n = 0
        for sub in room.subscribers():
            if sub.receives_presence:
                sub.send_wire(wire)
                n += 1
        self.counters.frames_sent["presence"] += n
        return n

    def subscribe(self, link: Link, channel: str, include_sender_metadata: bool,
                  ) -> bytes | asyncio.Future[None] | None:
        """Subscribe ``link``. Others hear ``joined`` before this returns (when the peer is new
        to the channel). Returns the snapshot frame to send after the ack, or None when the
        link may not see presence. In a cluster, possibly a future instead (the join waits
        for Redis): once it is done, ``finish_subscribe`` returns the snapshot, and the
        caller sends ack and snapshot right then."""
        if self.broker.clustered:
            return self._subscribe_clustered(link, channel, include_sender_metadata)
        room = self._room(link.app_id, channel, create=True)
        assert room is not None
        if room.has(link):
            # Re-subscribe: the latest includeSenderMetadata wins, nobody hears a second joined.
            room.plain.pop(link, None)
            room.with_meta.pop(link, None)
        else:
            peer = link.peer_id
            was_present = room.present(peer)
            first = not room.local
            room.local[peer] = room.local.get(peer, 0) + 1
            if room.local[peer] == 1:
                room.entries[peer] = link.presence_entry
                self.broker.presence(link.app_id, channel, peer, link.presence_entry, True)
            if not was_present:
                self._broadcast_presence(room, [link.presence_entry], [])
                if self.observer is not None:
                    self.observer.joined(link.app_id, channel, peer, link.presence_entry,
                                         len(room.local), first)
        (room.with_meta if include_sender_metadata else room.plain)[link] = None
        if not link.receives_presence:
            return None
        return self.snapshot_frame(room, exclude=link.peer_id)

    def _subscribe_clustered(self, link: Link, channel: str, include: bool,
                             ) -> bytes | asyncio.Future[None] | None:
        room = self._room(link.app_id, channel, create=True)
        assert room is not None
        if room.has(link):
            room.plain.pop(link, None)
            room.with_meta.pop(link, None)
            (room.with_meta if include else room.plain)[link] = None
            return self.snapshot_frame(room, link.peer_id) if link.receives_presence else None
        peer = link.peer_id
        held = room.held.get(peer, 0) + 1
        room.held[peer] = held
        joining: asyncio.Future[None] | None
        if held == 1:
            joining = self.broker.join(link.app_id, channel, peer, link.presence_entry)
            if joining is not None and not joining.done():
                room.joining[peer] = joining
                joining.add_done_callback(
                    lambda f: room.joining.pop(peer) if room.joining.get(peer) is f else None)
        else:
            joining = room.joining.get(peer)
        room.pending[link] = include
        if joining is None or joining.done():
            if joining is None or not (joining.cancelled() or joining.exception()):
                return self.finish_subscribe(link, channel)
            gone: asyncio.Future[None] = joining.get_loop().create_future()
            gone.cancel()
            return gone
        return joining

    def finish_subscribe(self, link: Link, channel: str) -> bytes | None:
        """Cluster: the join ``subscribe`` waited for is done; the link becomes a subscriber
        now, so no presence frame reaches it before the snapshot this returns."""
        if is_pattern(channel):
            t = self.tenants.get(link.app_id)
            if t is not None:
                t.wildcards.activate(link, channel)
            return None
        room = self._room(link.app_id, channel, create=False)
        if room is None or link not in room.pending:
            return None
        include = room.pending.pop(link)
        (room.with_meta if include else room.plain)[link] = None
        return self.snapshot_frame(room, link.peer_id) if link.receives_presence else None

    def snapshot_frame(self, room: Room, exclude: str | None = None) -> bytes:
        members = [e for p, e in room.entries.items() if p != exclude and room.present(p)]
        return frames.encode_presence(room.name_json, members, [])

    def unsubscribe(self, link: Link, channel: str) -> bool:
        """Remove the subscription; others hear ``left`` when the peer's last socket leaves the
        channel on every node. Returns whether the link was subscribed."""
        if "*" in channel and is_pattern(channel):
            return self._unsubscribe_pattern(link, channel)
        room = self._room(link.app_id, channel, create=False)
        if room is None:
            return False
        if self.broker.clustered:
            return self._unsubscribe_clustered(link, channel, room)
        if not room.has(link):
            return False
        room.plain.pop(link, None)
        room.with_meta.pop(link, None)
        if room.positioned:
            room.positioned.pop(link, None)
        peer = link.peer_id
        count = room.local.get(peer, 0) - 1
        if count > 0:
            room.local[peer] = count
        else:
            room.local.pop(peer, None)
            entry = room.entries.get(peer, link.presence_entry)
            self.broker.presence(link.app_id, channel, peer, entry, False)
            if not room.present(peer):
                room.entries.pop(peer, None)
                self._broadcast_presence(room, [], [entry])
                if self.observer is not None:
                    self.observer.left(link.app_id, channel, peer, entry, len(room.local),
                                       not room.local)
        self._maybe_drop_room(link.app_id, room)
        return True

    def _unsubscribe_clustered(self, link: Link, channel: str, room: Room) -> bool:
        if room.pending.pop(link, None) is None:
            if not room.has(link):
                return False
            room.plain.pop(link, None)
            room.with_meta.pop(link, None)
        room.positioned.pop(link, None)
        if room.recovering or room.floor:
            room.recovering.pop(link, None)
            room.floor.pop(link, None)
        if room.bare:
            room.bare.pop(link, None)
            room.seen.pop(link, None)
        peer = link.peer_id
        held = room.held.get(peer, 0) - 1
        if held > 0:
            room.held[peer] = held
        else:
            room.held.pop(peer, None)
            # The others (and this node's other subscribers) hear `left` from the broker
            # once Redis counted the last holder out.
            self.broker.leave(link.app_id, channel, peer, last=not room.held)
        self._maybe_drop_room(link.app_id, room)
        return True

    # -- pattern subscriptions -----------------------------------------------------------------

    def subscribe_pattern(self, link: Link, pattern: str, include_sender_metadata: bool,
                          ) -> asyncio.Future[None] | None:
        """Follow every channel ``pattern`` matches (no presence either way). In a cluster,
        the app's first pattern on this node waits until the broker receives the app's
        publishes from every node: a future, after which ``finish_subscribe`` activates the
        link. Later patterns of the app wait for the same future while it runs."""
        t = self.tenant(link.app_id)
        ready = self.broker.follow_app(link.app_id, True) if self.broker.clustered else None
        if ready is not None and ready.done() and (
                ready.cancelled() or ready.exception() is not None):
            return ready  # the backplane is down: the caller answers with an error
        waiting = ready is not None and not ready.done()
        t.wildcards.add(link, pattern, include_sender_metadata, pending=waiting)
        return ready if waiting else None

    def _unsubscribe_pattern(self, link: Link, pattern: str) -> bool:
        t = self.tenants.get(link.app_id)
        if t is None or not t.wildcards.remove(link, pattern):
            return False
        if not t.wildcards and self.broker.clustered:
            self.broker.follow_app(link.app_id, False)
        return True

    def _fan_out_wildcards(
        self, t: Tenant, channel: str, room: Room | None, data: bytes, sender_json: bytes,
        sender_metadata: bytes | None, skip: Link | None,
    ) -> int:
        """Deliver to the pattern subscribers of ``channel`` that are not its subscribers
        (those got the message through the channel: once per link)."""
        plain, meta = t.wildcards.recipients(
            channel, room.subscribers() if room is not None else (), skip)
        if not plain and not meta:
            return 0
        name_json = room.name_json if room is not None else frames.encode_json(channel)
        if plain:
            wire = self._wire(frames.encode_message(name_json, sender_json, data))
            for sub in plain:
                sub.send_wire(wire)
        if meta:
            wire = self._wire(frames.encode_message(name_json, sender_json, data,
                                                    sender_metadata))
            for sub in meta:
                sub.send_wire(wire)
        return len(plain) + len(meta)

    def _maybe_drop_room(self, app_id: str, room: Room) -> None:
        if len(room) == 0 and not room.remote and not room.held and not room.pending:
            t = self.tenants.get(app_id)
            if t is not None:
                t.rooms.pop(room.name, None)

    def members(self, app_id: str, channel: str) -> list[bytes]:
        """Encoded presence entries of everyone present in the channel (cluster-wide)."""
        room = self._room(app_id, channel, create=False)
        if room is None:
            return []
        return [e for p, e in room.entries.items() if room.present(p)]

    async def members_everywhere(self, app_id: str, channel: str) -> list[bytes]:
        """``members``, for a channel this node may hold no member of (REST)."""
        if self.broker.clustered:
            return await self.broker.members(app_id, channel)
        return self.members(app_id, channel)

    # -- messages ------------------------------------------------------------------------------

    def publish(
        self,
        app_id: str,
        channel: str,
        data: bytes,
        sender_json: bytes,
        sender_metadata: bytes | None,
        skip: Link | None = None,
    ) -> int:
        """Fan a message out to the channel's subscribers except ``skip``. The frame is encoded
        and framed once per variant, and every write is queued, never awaited. One publish in
        a few is timed (``HubCounters.sample_fanout``): two clock reads, not on every call."""
        counters = self.counters
        stream = None
        ch = self.cluster_history
        if ch is not None:
            rule = ch.rules.lookup((app_id, channel))
            if rule is not None:
                return self._publish_recorded(ch, rule, app_id, channel, data, sender_json,
                                              sender_metadata, skip)
        if self.history is not None:
            stream = self.history.append(app_id, channel, self.clock(), data, sender_json,
                                         sender_metadata)
            self.last_stream = stream
        if counters.sample_fanout():
            start = _perf()
            delivered = self._fan_out(app_id, channel, data, sender_json, sender_metadata, skip,
                                      stream=stream)
            counters.observe_fanout(_perf() - start)
        else:
            delivered = self._fan_out(app_id, channel, data, sender_json, sender_metadata, skip,
                                      stream=stream)
        counters.frames_sent["message"] += delivered
        if self.broker.clustered:
            self.broker.publish(app_id, channel, data, sender_json, sender_metadata)
        observer = self.observer
        if observer is not None and app_id in observer.message_apps:
            observer.published(app_id, channel, data, sender_json)
        return delivered

    def _publish_recorded(
        self, ch: ClusterHistory, rule: HistoryRule, app_id: str, channel: str, data: bytes,
        sender_json: bytes, sender_metadata: bytes | None, skip: Link | None,
    ) -> int:
        """``publish`` on a channel with history in a cluster: the subscribers that did not
        opt in get it now, as on any channel; the opted-in ones when it comes back from
        Redis with its offset (``deliver_posted``), in the order every node sees."""
        counters = self.counters
        t = self.tenants.get(app_id)
        room = t.rooms.get(channel) if t is not None else None
        delivered = 0
        if t is not None:
            start = _perf() if counters.sample_fanout() else None
            if t.wildcards:
                delivered = self._fan_out_wildcards(t, channel, room, data, sender_json,
                                                    sender_metadata, skip)
            if room is not None:
                delivered += self._fan_out_bare(room, data, sender_json, sender_metadata,
                                                skip, room.positioned)
            if start is not None:
                counters.observe_fanout(_perf() - start)
        counters.frames_sent["message"] += delivered
        token = 0
        if skip is not None and room is not None and skip in room.positioned:
            self._skip_ids += 1
            token = self._skip_ids
            if len(self._skips) >= _SKIPS_MAX:
                self._skips.clear()  # lost answers (a backplane lost meanwhile)
            self._skips[token] = skip
        self.last_stream = None
        self.last_position = ch.append(app_id, channel, rule, self.clock(), data, sender_json,
                                       sender_metadata, token, token != 0)
        observer = self.observer
        if observer is not None and app_id in observer.message_apps:
            observer.published(app_id, channel, data, sender_json)
        return delivered

    def _fan_out_bare(self, room: Room, data: bytes, sender_json: bytes,
                      sender_metadata: bytes | None, skip: Link | None,
                      besides: dict[Link, None]) -> int:
        """The room's subscribers not in ``besides`` (a subset of them) get the message as
        today's frames."""
        n = 0
        if besides and len(besides) >= len(room):
            return 0  # everyone opted in
        for group, metadata in ((room.plain, None), (room.with_meta, sender_metadata)):
            if not group:
                continue
            wire = b""
            if not besides:
                # No lookup per subscriber: the room of official SDKs costs what it did.
                for sub in group:
                    if sub is not skip:
                        if not wire:
                            wire = self._wire(frames.encode_message(
                                room.name_json, sender_json, data, metadata))
                        sub.send_wire(wire)
                        n += 1
                continue
            for sub in group:
                if sub is skip or sub in besides:
                    continue
                if not wire:
                    wire = self._wire(frames.encode_message(room.name_json, sender_json, data,
                                                            metadata))
                sub.send_wire(wire)
                n += 1
        return n

    def deliver_posted(
        self, app_id: str, channel: str, data: bytes, sender_json: bytes,
        sender_metadata: bytes | None, offset: int, epoch: str, own: int,
    ) -> int:
        """A publish on a channel with history, from Redis with its position (any node's,
        this one's included: ``own`` >= 0). The opted-in subscribers get it here; when
        another node published it, the others too (as ``deliver_publish`` would)."""
        t = self.tenants.get(app_id)
        room = t.rooms.get(channel) if t is not None else None
        if room is None:
            return 0
        skip = self._skips.pop(own, None) if own > 0 else None
        n = 0
        if own < 0:
            n = self._fan_out_bare(room, data, sender_json, sender_metadata, None,
                                   room.positioned)
        if room.recovering:
            live = _Live(offset, epoch, data, sender_json, sender_metadata)
            for buffered in room.recovering.values():
                buffered.append(live)
        positioned = room.positioned
        if positioned:
            epoch_json = self._epoch_json(epoch)
            suffix = encode_position_suffix(offset, epoch_json)
            floor = room.floor
            bare = room.bare
            if not floor and not bare and len(positioned) == len(room):
                n += self._send_all_positioned(room, data, sender_json, sender_metadata,
                                               suffix, skip)
                self.counters.frames_sent["message"] += n
                return n
            at = at_meta = plain = plain_meta = b""
            for sub in positioned:
                if sub is skip:
                    continue
                if floor:
                    seen = floor.get(sub)
                    if seen is not None:
                        if seen[0] == epoch and offset <= seen[1]:
                            continue  # replayed or buffered already
                        del floor[sub]
                if bare and sub in bare:
                    room.seen[sub] = (epoch, offset)
                    if sub in room.with_meta:
                        if not plain_meta:
                            plain_meta = self._wire(frames.encode_message(
                                room.name_json, sender_json, data, sender_metadata))
                        sub.send_wire(plain_meta)
                    else:
                        if not plain:
                            plain = self._wire(frames.encode_message(
                                room.name_json, sender_json, data))
                        sub.send_wire(plain)
                elif sub in room.with_meta:
                    if not at_meta:
                        at_meta = self._wire(frames.encode_message_at(
                            room.name_json, sender_json, data, sender_metadata, suffix))
                    sub.send_wire(at_meta)
                else:
                    if not at:
                        at = self._wire(frames.encode_message_at(
                            room.name_json, sender_json, data, None, suffix))
                    sub.send_wire(at)
                n += 1
        self.counters.frames_sent["message"] += n
        return n

    @staticmethod
    def _hold_for_read(room: Room, link: Link) -> bool:
        """Take ``link`` (subscribed or subscribing) out of the room's delivery while Redis is
        read for it: the channel's messages that reach the node meanwhile are buffered for it
        (``recovering``) and go out after what the read gives. False: the link is neither
        subscribed nor subscribing (it left)."""
        if room.has(link):
            room.pending[link] = link in room.with_meta
            room.plain.pop(link, None)
            room.with_meta.pop(link, None)
        elif link not in room.pending:
            return False
        room.positioned.pop(link, None)
        room.bare.pop(link, None)
        room.seen.pop(link, None)
        room.floor.pop(link, None)
        room.recovering[link] = []
        return True

    def _epoch_json(self, epoch: str) -> bytes:
        known = self._epochs.get(epoch)
        if known is None:
            if len(self._epochs) >= _SKIPS_MAX:
                self._epochs.clear()
            known = self._epochs[epoch] = frames.encode_json(epoch)
        return known

    def _fan_out(
        self,
        app_id: str,
        channel: str,
        data: bytes,
        sender_json: bytes,
        sender_metadata: bytes | None,
        skip: Link | None,
        patterns: bool = True,
        stream: Stream | None = None,
    ) -> int:
        """Queue a message for the local subscribers of ``channel`` and, with ``patterns``,
        for the local pattern subscribers it matches. ``stream``: the history the message was
        just recorded in (its subscribers that opted in get the position)."""
        t = self.tenants.get(app_id)
        if t is None:
            return 0
        room = t.rooms.get(channel)
        n = 0
        if t.wildcards and patterns:
            n = self._fan_out_wildcards(t, channel, room, data, sender_json, sender_metadata,
                                        skip)
        if room is None:
            return n
        if stream is not None and room.positioned:
            return n + self._fan_out_positioned(room, data, sender_json, sender_metadata, skip,
                                                stream)
        if room.plain:
            wire = self._wire(frames.encode_message(room.name_json, sender_json, data))
            for sub in room.plain:
                if sub is not skip:
                    sub.send_wire(wire)
                    n += 1
        if room.with_meta:
            wire = self._wire(frames.encode_message(room.name_json, sender_json, data,
                                                    sender_metadata))
            for sub in room.with_meta:
                if sub is not skip:
                    sub.send_wire(wire)
                    n += 1
        return n

    def _send_all_positioned(
        self, room: Room, data: bytes, sender_json: bytes, sender_metadata: bytes | None,
        suffix: bytes, skip: Link | None,
    ) -> int:
        """Every subscriber of ``room`` opted in (a room of roomwire SDKs): one variant per
        group (sender metadata or not), no lookups per subscriber."""
        n = 0
        for group, metadata in ((room.plain, None), (room.with_meta, sender_metadata)):
            if group:
                wire = self._wire(frames.encode_message_at(
                    room.name_json, sender_json, data, metadata, suffix))
                for sub in group:
                    if sub is not skip:
                        sub.send_wire(wire)
                        n += 1
        return n

    def _fan_out_positioned(
        self, room: Room, data: bytes, sender_json: bytes, sender_metadata: bytes | None,
        skip: Link | None, stream: Stream,
    ) -> int:
        """``_fan_out`` for a room with opted-in subscribers: up to four variants (sender
        metadata or not, position or not), each encoded once."""
        suffix = encode_position_suffix(stream.top, stream.epoch_json)
        positioned = room.positioned
        if len(positioned) == len(room):
            return self._send_all_positioned(room, data, sender_json, sender_metadata, suffix,
                                             skip)
        n = 0
        for group, metadata in ((room.plain, None), (room.with_meta, sender_metadata)):
            if not group:
                continue
            bare = at = b""
            for sub in group:
                if sub is skip:
                    continue
                if sub in positioned:
                    if not at:
                        at = self._wire(frames.encode_message_at(
                            room.name_json, sender_json, data, metadata, suffix))
                    sub.send_wire(at)
                else:
                    if not bare:
                        bare = self._wire(frames.encode_message(
                            room.name_json, sender_json, data, metadata))
                    sub.send_wire(bare)
                n += 1
        return n

    # -- history (roomwire's extension) --------------------------------------------------------

    def follow_history(self, link: Link, channel: str, recover: Position | None,
                       ) -> tuple[Position | None, bool | None, list[bytes]]:
        """``link`` (subscribed to ``channel`` just now) opted in to history: its position
        from here on, whether ``recover`` could be honoured, and the frames to replay (each
        already a ``message`` with its position). (None, None/False, []) when the channel
        keeps no history. Runs in the same turn as the subscribe, so no publish falls
        between the replay and the first live message."""
        room = self._room(link.app_id, channel, create=False)
        history = self.history
        if history is None or room is None or not room.has(link):
            return None, (None if recover is None else False), []
        now = self.clock()
        stream = history.stream(link.app_id, channel, now)
        if stream is None:
            return None, (None if recover is None else False), []
        stream.touched = now
        room.positioned[link] = None
        if recover is None:
            return stream.position, None, []
        recovered, replay = decide(stream, recover, now, self.replay_max_bytes)
        metadata = link in room.with_meta
        out = [self._replay_frame(room, entry, stream, metadata) for entry in replay]
        return stream.position, recovered, out

    def recorded_in_redis(self, app_id: str, channel: str) -> bool:
        """Cluster: whether the channel keeps history (an opted-in subscribe of it then
        completes with ``follow_recorded``, after a Redis read)."""
        ch = self.cluster_history
        return ch is not None and ch.rules.lookup((app_id, channel)) is not None

    def follow_recorded(self, link: Link, channel: str, recover: Position | None,
                        ) -> asyncio.Future[HistoryRead] | None:
        """Cluster: ``follow_history`` in two steps. ``link`` (subscribed just now) is held
        back from the room, with its positioned messages buffered, while Redis is read
        (after the join: every later publication reaches this node); then
        ``finish_recorded`` with the read's result. None: nothing to follow (no rule, or
        the link is not subscribed)."""
        ch = self.cluster_history
        room = self._room(link.app_id, channel, create=False)
        if ch is None or room is None:
            return None
        rule = ch.rules.lookup((link.app_id, channel))
        if rule is None:
            return None
        if not self._hold_for_read(room, link):
            return None
        if recover is None:
            return ch.read(link.app_id, channel, rule, 0, start=True, count=0)
        return ch.read(link.app_id, channel, rule, recover.offset, start=True,
                       max_bytes=self.replay_max_bytes)

    def finish_recorded(self, link: Link, channel: str, read: HistoryRead,
                        recover: Position | None,
                        ) -> tuple[bytes | None, Position | None, bool | None, list[bytes]]:
        """Cluster: the read ``follow_recorded`` started is back. The link becomes a
        subscriber now (the snapshot is returned for after the ack, as ``finish_subscribe``
        does), then: its position, whether ``recover`` could be honoured, and the frames to
        send after the snapshot (the replay, then the live messages buffered meanwhile that
        are newer than it: no gap, no duplicate). A link that left meanwhile: (None, None,
        None, [])."""
        room = self._room(link.app_id, channel, create=False)
        ch = self.cluster_history
        if room is None or ch is None or link not in room.recovering:
            return None, None, None, []
        buffered = room.recovering.pop(link)
        snapshot = self.finish_subscribe(link, channel)
        rule = ch.rules.lookup((link.app_id, channel))
        if not room.has(link) or read.epoch is None or rule is None:
            return snapshot, None, None if recover is None else False, []
        room.positioned[link] = None
        recovered: bool | None = None
        replay: list[Entry] = []
        if recover is not None:
            recovered, replay = decide_read(read, recover, self.clock(), rule.ttl)
        metadata = link in room.with_meta
        epoch = read.epoch
        epoch_json = self._epoch_json(epoch)
        out = [frames.encode_message_at(
            room.name_json, e.sender_json, e.data, e.sender_metadata if metadata else None,
            encode_position_suffix(e.offset, epoch_json)) for e in replay]
        last = read.top
        for live in buffered:
            if live.epoch == epoch:
                if live.offset <= last:
                    continue
                last = live.offset
            out.append(frames.encode_message_at(
                room.name_json, live.sender_json, live.data,
                live.sender_metadata if metadata else None,
                encode_position_suffix(live.offset, self._epoch_json(live.epoch))))
        room.floor[link] = (epoch, last)
        return snapshot, Position(epoch, read.top), recovered, out

    def unfollow_history(self, link: Link, channel: str) -> None:
        """A repeated subscribe without the extension: plain messages from now on."""
        room = self._room(link.app_id, channel, create=False)
        if room is None:
            return
        if self.cluster_history is not None and link in room.positioned:
            # Cluster: it stays on the Redis path (a message of this node's on its way back
            # would otherwise reach it by neither path), without positions.
            room.bare[link] = None
            return
        room.positioned.pop(link, None)

    @staticmethod
    def _replay_frame(room: Room, entry: Entry, stream: Stream, metadata: bool) -> bytes:
        return frames.encode_message_at(
            room.name_json, entry.sender_json, entry.data,
            entry.sender_metadata if metadata else None,
            encode_position_suffix(entry.offset, stream.epoch_json))

    # -- replay to the official SDKs (roomwire's setting, server/replay.py) -------------------

    def note_drop(self, link: Link, channels: list[str]) -> None:
        """``link``, a connection authenticated by a JWT ``sub`` (its peer id), is ending
        while subscribed to ``channels``: mark where it stood on those the ``replay`` setting
        covers. Runs before the hub forgets the link, so no publish falls between its last
        live message and the mark."""
        replay, history = self.replay, self.history
        if replay is not None and self.cluster_ledger is not None:
            self._note_drop_clustered(replay, self.cluster_ledger, link, channels)
            return
        if replay is None or history is None:
            return
        now = self.clock()
        for channel in channels:
            if "*" in channel and is_pattern(channel):
                continue  # patterns keep no history
            rule = replay.rule(link.app_id, channel)
            if rule is None:
                continue
            stream = history.stream(link.app_id, channel, now)
            if stream is None:
                continue
            # A quiet channel must not be forgotten (a new epoch) while the mark is owed.
            stream.touched = max(stream.touched, now)
            replay.dropped((link.app_id, link.peer_id, channel), stream.position, now,
                           rule.window)

    def _note_drop_clustered(self, replay: Replay, ledger: ClusterLedger, link: Link,
                             channels: list[str]) -> None:
        """``note_drop`` in a cluster: the mark goes to Redis, at the position of the last
        message the link got (its messages came in Redis's order)."""
        t = self.tenants.get(link.app_id)
        if t is None:
            return
        for channel in channels:
            room = t.rooms.get(channel)
            if room is None or not room.seen:
                continue
            seen = room.seen.get(link)
            rule = replay.rule(link.app_id, channel)
            if seen is not None and rule is not None:
                ledger.dropped(link.app_id, link.peer_id, channel, Position(*seen),
                               rule.window)

    def replays_in_redis(self, link: Link, channel: str) -> bool:
        """Cluster: whether a fresh subscribe of ``link`` (a token identity) to ``channel``
        completes with ``follow_missed``: the ``replay`` setting covers it."""
        ch, replay = self.cluster_history, self.replay
        return (ch is not None and replay is not None and self.cluster_ledger is not None
                and replay.rule(link.app_id, channel) is not None
                and ch.rules.lookup((link.app_id, channel)) is not None)

    def follow_missed(self, link: Link, channel: str,
                      ) -> asyncio.Future[tuple[Position | None, HistoryRead]] | None:
        """Cluster: ``replay_missed`` in steps. ``link`` (subscribed just now) is held back
        from the room, with the messages of the channel buffered, while Redis gives the mark
        its sub is owed (if any) and then the history after it (or, without a mark, the
        channel's position: where the link starts, for its own mark if it drops). Then
        ``finish_missed`` with both. None: nothing to follow."""
        ch, ledger, replay = self.cluster_history, self.cluster_ledger, self.replay
        room = self._room(link.app_id, channel, create=False)
        if ch is None or ledger is None or replay is None or room is None:
            return None
        rule = ch.rules.lookup((link.app_id, channel))
        owed = replay.rule(link.app_id, channel)
        if rule is None or owed is None:
            return None
        if not self._hold_for_read(room, link):
            return None
        out: asyncio.Future[tuple[Position | None, HistoryRead]] = (
            asyncio.get_running_loop().create_future())
        taking = ledger.take(link.app_id, link.peer_id, channel)

        def taken(f: asyncio.Future[Position | None]) -> None:
            if out.done():
                return
            if f.cancelled() or f.exception() is not None:
                out.set_exception(RuntimeError("the cluster's ledger did not answer"))
                return
            mark = f.result()
            if mark is None:
                reading = ch.read(link.app_id, channel, rule, 0, start=True, count=0)
            else:
                reading = ch.read(link.app_id, channel, rule, mark.offset, start=True,
                                  max_bytes=self.replay_max_bytes)

            def read(r: asyncio.Future[HistoryRead]) -> None:
                if out.done():
                    return
                if r.cancelled() or r.exception() is not None:
                    if mark is not None:  # owed still: put it back for the next try
                        ledger.dropped(link.app_id, link.peer_id, channel, mark,
                                       owed.window)
                    out.set_exception(RuntimeError("the cluster's history did not answer"))
                else:
                    out.set_result((mark, r.result()))

            reading.add_done_callback(read)

        taking.add_done_callback(taken)
        return out

    def finish_missed(self, link: Link, channel: str, mark: Position | None,
                      read: HistoryRead) -> tuple[bytes | None, list[bytes]]:
        """Cluster: what ``follow_missed`` started is back. The link becomes a subscriber
        now, getting its messages in Redis's order as today's frames. Returns the snapshot
        (for after the ack) and the frames for after it: the replay (all missed messages
        or, if the gap is gone, none: logged and counted), then the messages buffered
        meanwhile that are newer than the read (no gap, no duplicate)."""
        room = self._room(link.app_id, channel, create=False)
        ch, replay = self.cluster_history, self.replay
        if (room is None or ch is None or replay is None or link not in room.recovering
                or link.close_code is not None):
            if mark is not None and self.cluster_ledger is not None and replay is not None:
                # The link left (or is closing) while Redis answered: the return is still
                # owed to the next connection of the sub.
                owed = replay.rule(link.app_id, channel)
                if owed is not None:
                    self.cluster_ledger.dropped(link.app_id, link.peer_id, channel, mark,
                                                owed.window)
            return None, []
        buffered = room.recovering.pop(link)
        snapshot = self.finish_subscribe(link, channel)
        rule = ch.rules.lookup((link.app_id, channel))
        out: list[bytes] = []
        if not room.has(link) or read.epoch is None or rule is None:
            return snapshot, out
        metadata = link in room.with_meta
        if mark is not None:
            now = self.clock()
            plan = judge(mark, Position(read.epoch, read.top), read.entries,
                         self.replay_max_bytes, more=read.more, horizon=now - rule.ttl)
            replay.outcomes[plan.outcome] += 1
            if plan.outcome in LOST:
                log.info("replay: nothing replayed to a returning subscriber of %r (app %s): "
                         "%s (it had missed %s messages)", channel, link.app_id, plan.outcome,
                         read.top - mark.offset if read.epoch == mark.epoch else "?")
            out.extend(frames.encode_message(room.name_json, e.sender_json, e.data,
                                             e.sender_metadata if metadata else None)
                       for e in plan.replay)
        epoch, last = read.epoch, read.top
        for live in buffered:
            if live.epoch == epoch:
                if live.offset <= last:
                    continue
                last = live.offset
            else:
                epoch, last = live.epoch, live.offset
            out.append(frames.encode_message(room.name_json, live.sender_json, live.data,
                                             live.sender_metadata if metadata else None))
        room.positioned[link] = None
        room.bare[link] = None
        room.floor[link] = room.seen[link] = (epoch, last)
        self.counters.frames_sent["message"] += len(out)
        return snapshot, out

    def replay_missed(self, link: Link, channel: str, include_sender_metadata: bool,
                      ) -> list[bytes]:
        """``link`` (a token identity) subscribed to ``channel`` afresh just now: the
        broadcasts its sub missed since a connection of it dropped off the channel, as the
        ``message`` frames live delivery would have sent it, oldest first; [] when nothing
        is owed or the gap is no longer in history (logged and counted). Runs in the same
        turn as the subscribe, so the first live message follows the last replayed one."""
        replay, history = self.replay, self.history
        if replay is None or history is None or replay.rule(link.app_id, channel) is None:
            return []
        now = self.clock()
        mark = replay.take((link.app_id, link.peer_id, channel), now)
        if mark is None:
            return []
        stream = history.stream(link.app_id, channel, now, create=False)
        missed: list[Entry] = []
        if stream is not None:
            stream.trim(now)
            if stream.epoch == mark.position.epoch:
                missed = stream.after(mark.position.offset)
        plan = judge(mark.position, None if stream is None else stream.position, missed,
                     self.replay_max_bytes)
        replay.outcomes[plan.outcome] += 1
        if plan.outcome in LOST:
            log.info("replay: nothing replayed to a returning subscriber of %r (app %s): %s "
                     "(it had missed %s messages)", channel, link.app_id, plan.outcome,
                     "?" if stream is None or stream.epoch != mark.position.epoch
                     else stream.top - mark.position.offset)
            return []
        room = self._room(link.app_id, channel, create=False)
        name_json = room.name_json if room is not None else frames.encode_json(channel)
        out = [frames.encode_message(name_json, e.sender_json, e.data,
                                     e.sender_metadata if include_sender_metadata else None)
               for e in plan.replay]
        self.counters.frames_sent["message"] += len(out)
        return out

    def direct(
        self, app_id: str, peer_id: str, data: bytes, sender_json: bytes,
        sender_metadata: bytes | None,
    ) -> int | asyncio.Future[int | None] | None:
        """Deliver to every socket of ``peer_id``. Returns the local delivery count, or None
        when the peer is online nowhere (``peer_not_found``). In a cluster, with no local
        socket of the peer, a future of that: Redis tells how many nodes got it."""
        n = self.deliver_direct(app_id, peer_id, data, sender_json, sender_metadata)
        if self.broker.clustered:
            return self.broker.direct(app_id, peer_id, data, sender_json, sender_metadata, n)
        return n if n else None

    # -- ClusterSink: events from other nodes ------------------------------------------------------

    def deliver_publish(
        self, app_id: str, channel: str, data: bytes, sender_json: bytes,
        sender_metadata: bytes | None,
    ) -> int:
        # A node following the app for its patterns gets those through
        # ``deliver_pattern_publish``: here only the channel's subscribers.
        n = self._fan_out(app_id, channel, data, sender_json, sender_metadata, None,
                          patterns=False)
        self.counters.frames_sent["message"] += n
        return n

    def deliver_pattern_publish(
        self, app_id: str, channel: str, data: bytes, sender_json: bytes,
        sender_metadata: bytes | None,
    ) -> int:
        """A publish of another node on a channel of an app this node follows for patterns."""
        t = self.tenants.get(app_id)
        if t is None or not t.wildcards:
            return 0
        n = self._fan_out_wildcards(t, channel, t.rooms.get(channel), data, sender_json,
                                    sender_metadata, None)
        self.counters.frames_sent["message"] += n
        return n

    def deliver_direct(
        self, app_id: str, peer_id: str, data: bytes, sender_json: bytes,
        sender_metadata: bytes | None,
    ) -> int:
        t = self.tenants.get(app_id)
        if t is None:
            return 0
        sockets = t.peers.get(peer_id)
        if not sockets:
            return 0
        if self._unwelcomed:
            # Nothing may precede a welcome.
            sockets = {link: None for link in sockets if link not in self._unwelcomed}
            if not sockets:
                return 0
        payload = frames.encode_direct(sender_json, data, sender_metadata)
        n = len(sockets)
        self.counters.frames_sent["direct"] += n
        if n == 1:
            for link in sockets:
                link.send(payload)
            return 1
        wire = self._wire(payload)
        for link in sockets:
            link.send_wire(wire)
        return n

    def remote_presence(
        self, app_id: str, channel: str, peer_id: str, entry: bytes, present: bool
    ) -> None:
        room = self._room(app_id, channel, create=present)
        if room is None:
            return
        was = room.present(peer_id)
        count = room.remote.get(peer_id, 0) + (1 if present else -1)
        if count > 0:
            room.remote[peer_id] = count
        else:
            room.remote.pop(peer_id, None)
        now = room.present(peer_id)
        if now and not was:
            room.entries[peer_id] = entry
            self._broadcast_presence(room, [entry], [])
        elif was and not now:
            old = room.entries.pop(peer_id, entry)
            self._broadcast_presence(room, [], [old])
        self._maybe_drop_room(app_id, room)

    def deliver_disconnect(self, app_id: str, peer_id: str, code: int, reason: str,
                           scope: tuple[str, ...] | None = None) -> int:
        links = self.peer_links(app_id, peer_id)
        if scope is not None:
            links = [link for link in links if _within(link, scope)]
        for link in links:
            link.close(code, reason)
        return len(links)

    # -- cluster-wide actions and state --------------------------------------------------------

    async def kick(self, app_id: str, peer_id: str, code: int, reason: str,
                   scope: tuple[str, ...] | None = None) -> int:
        """Close every socket of ``peer_id`` on every node; returns the number closed everywhere
        (the other nodes' answers are awaited for a bounded time). ``scope``: only sockets
        whose whole channel scope these patterns cover (a kick by a narrower key)."""
        n = self.deliver_disconnect(app_id, peer_id, code, reason, scope)
        if self.broker.clustered:
            n += await self.broker.kick(app_id, peer_id, code, reason, scope)
        return n

    def connections_everywhere(self, app_id: str) -> int:
        """Open connections of ``app_id`` on every node (other nodes as last reported)."""
        return self.connections(app_id) + self.broker.connections_elsewhere(app_id)

    def local_state(self) -> tuple[list[tuple[str, str, str, bytes]], list[tuple[str, str]]]:
        presence: list[tuple[str, str, str, bytes]] = []
        peers: list[tuple[str, str]] = []
        for app_id, t in self.tenants.items():
            for name, room in t.rooms.items():
                for peer in room.local:
                    presence.append((app_id, name, peer, room.entries[peer]))
            peers.extend((app_id, peer) for peer in t.peers)
        return presence, peers

    def local_connections(self) -> dict[str, int]:
        return {app_id: t.links for app_id, t in self.tenants.items() if t.links > 0}

    def close_app(self, app_id: str, code: int, reason: str) -> int:
        t = self.tenants.get(app_id)
        if t is None:
            return 0
        links = [link for sockets in t.peers.values() for link in sockets]
        for link in links:
            link.close(code, reason)
        return len(links)

    def stats(self, app_id: str) -> dict[str, int]:
        t = self.tenants.get(app_id)
        if t is None:
            return {"connections": 0, "channels": 0, "peers": 0}
        return {"connections": t.links, "channels": len(t.rooms), "peers": len(t.peers)}


def _within(link: Link, scope: tuple[str, ...]) -> bool:
    """Whether ``link``'s principal may use only channels that ``scope`` covers. A link
    without a principal is never inside a scope: a scoped kick leaves what it cannot judge."""
    principal = getattr(link, "principal", None)
    within = getattr(principal, "scope_within", None)
    return bool(within(scope)) if callable(within) else False
