"""The cluster's routing decisions as plain code: no Redis, no sockets, no event loop.

``redis.py`` does the I/O and asks this module what it means:

* ``ChannelView``: what a node knows of one channel's members, everywhere in the cluster,
  while it holds local members of it. It starts from a snapshot (the members hash and the
  channel's sequence number, read atomically by the join script) and then follows the
  channel's event stream: events older than the snapshot are dropped, events that arrive
  before the snapshot are buffered, and a gap in the sequence asks for a new snapshot. Every
  change it makes is returned as ``Changes`` (who joined, who left), which the hub turns into
  presence frames for the local subscribers.
* ``Keys``: the Redis key and channel names, and which Redis (shard) holds them.
* Small decisions: how many other nodes a ``PUBLISH`` reached (``remote_receivers``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from .wire import Join, Leave

SEP = "\x00"
"""Separates app id and name inside a key. Channel names and peer ids cannot contain control
characters (protocol/validate.py), app ids are generated or checked by the store, so NUL
never occurs inside one of the parts."""


Event = Join | Leave


@dataclass
class Changes:
    """What a view's step changed, and whether it needs a new snapshot.

    A step is read as "these left, then these joined" (the hub applies ``left`` first), so
    it holds the net change: a peer both joined and gone within the step (in a snapshot,
    then left by a buffered event replayed after it) is in neither list. Were it in both,
    its ``left`` would be applied before its ``joined`` and it would stay present for good,
    in a view whose sequence number matches Redis's (anti-entropy would never see it)."""

    joined: list[tuple[str, bytes]] = field(default_factory=list)
    """(peer, entry) of the peers that became present, in order."""
    left: list[tuple[str, bytes]] = field(default_factory=list)
    """(peer, entry) of the peers that left, in order."""
    reload: bool = False

    def __bool__(self) -> bool:
        return bool(self.joined or self.left or self.reload)


class ChannelView:
    """The cluster-wide members of one channel, as one node follows them."""

    def __init__(self) -> None:
        self.members: dict[str, bytes] = {}
        """peer -> presence entry, in the order this node learnt of them."""
        self.seq: int | None = None
        """Sequence number of the last event applied; None until the first snapshot."""
        self.loading = True
        """True while a snapshot is awaited: events are buffered, not applied."""
        self._buffer: list[Event] = []

    @property
    def ready(self) -> bool:
        return not self.loading

    def reached(self, seq: int) -> bool:
        """Whether every event up to ``seq`` is applied (a join's own event included)."""
        return not self.loading and self.seq is not None and self.seq >= seq

    def event(self, ev: Event) -> Changes:
        """One event from the channel's stream."""
        if self.loading:
            self._buffer.append(ev)
            return Changes()
        assert self.seq is not None
        if ev.seq <= self.seq:
            return Changes()  # already in the snapshot, or a duplicate
        if ev.seq != self.seq + 1:
            # A gap: an event was lost (a dropped subscription). Hold this one and reload.
            self.loading = True
            self._buffer.append(ev)
            return Changes(reload=True)
        out = Changes()
        self._apply(ev, out)
        return out

    def begin_reload(self) -> None:
        """A snapshot is being fetched (anti-entropy): buffer the stream meanwhile."""
        self.loading = True

    def load(self, seq: int, members: dict[str, bytes]) -> Changes:
        """A snapshot at ``seq``: adopt it, report the difference, then replay the buffered
        events newer than it (a gap among them asks for another snapshot)."""
        out = Changes()
        if self.seq is not None and seq < self.seq:
            # Older than what we applied (a reply that raced the stream): the stream is ahead.
            seq, members = self.seq, dict(self.members)
        for peer in [p for p in self.members if p not in members]:
            out.left.append((peer, self.members.pop(peer)))
        for peer, entry in members.items():
            if peer not in self.members:
                out.joined.append((peer, entry))
            self.members[peer] = entry
        self.seq = seq
        self.loading = False
        held, self._buffer = sorted(self._buffer, key=lambda e: e.seq), []
        for n, ev in enumerate(held):
            if ev.seq <= seq:
                continue
            if ev.seq != seq + 1:
                self.loading = True
                self._buffer = held[n:]
                out.reload = True
                return out
            self._apply(ev, out)
            seq = ev.seq
        return out

    def _apply(self, ev: Event, out: Changes) -> None:
        self.seq = ev.seq
        if isinstance(ev, Join):
            entry = ev.entry.encode()
            if ev.peer not in self.members:
                out.joined.append((ev.peer, entry))
            self.members[ev.peer] = entry
        else:
            gone = self.members.pop(ev.peer, None)
            if gone is None:
                return
            for n, (peer, _) in enumerate(out.joined):
                if peer == ev.peer:
                    del out.joined[n]  # joined within this step: nobody heard of it yet
                    return
            out.left.append((ev.peer, gone))


def remote_receivers(published_to: int, self_subscribed: bool) -> int:
    """How many other nodes a ``PUBLISH`` reached: Redis counts every subscribed connection,
    this node's own too when it is subscribed."""
    return max(0, published_to - (1 if self_subscribed else 0))


def shard_of(app_id: str, name: str, shards: int) -> int:
    """Which Redis holds a channel's or a peer's keys and pub/sub (node keys live on 0)."""
    if shards <= 1:
        return 0
    return zlib.crc32(f"{app_id}{SEP}{name}".encode()) % shards


def redis_glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis glob (``PSUBSCRIBE``): its special characters
    ``* ? [ ] \\`` backslash-escaped."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


class Keys:
    """Redis names under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def channel(self, app_id: str, channel: str) -> bytes:
        return f"{self.prefix}c:{app_id}{SEP}{channel}".encode()

    def app_channels(self, app_id: str) -> bytes:
        """A Redis glob matching every channel of ``app_id`` (pattern subscriptions)."""
        return redis_glob_escape(f"{self.prefix}c:{app_id}{SEP}").encode() + b"*"

    def channel_name(self, app_id: str, rch: bytes) -> str | None:
        """The roomwire channel of ``rch`` (a ``channel`` name of ``app_id``), or None."""
        head = f"{self.prefix}c:{app_id}{SEP}".encode()
        if not rch.startswith(head):
            return None
        try:
            return rch[len(head):].decode()
        except UnicodeDecodeError:
            return None

    def peer(self, app_id: str, peer_id: str) -> bytes:
        return f"{self.prefix}d:{app_id}{SEP}{peer_id}".encode()

    def node(self, inst: str) -> bytes:
        return f"{self.prefix}n:{inst}".encode()

    def presence(self, app_id: str, channel: str) -> tuple[str, str, str]:
        """Members hash, holder counts hash, sequence number."""
        base = f"{app_id}{SEP}{channel}"
        return (f"{self.prefix}pm:{base}", f"{self.prefix}pc:{base}",
                f"{self.prefix}ps:{base}")

    def history(self, app_id: str, channel: str) -> tuple[str, str]:
        """A channel's history: the stream of its entries, and its meta string (the epoch;
        ``redis_history.py``). Both on the channel's shard."""
        base = f"{app_id}{SEP}{channel}"
        return f"{self.prefix}hs:{base}", f"{self.prefix}hm:{base}"

    def replay_mark(self, app_id: str, channel: str, sub: str) -> str:
        """Where ``sub`` stood on a channel when it dropped (the ``replay`` setting), on
        the channel's shard."""
        return f"{self.prefix}rp:{app_id}{SEP}{channel}{SEP}{sub}"

    def memberships(self, inst: str) -> str:
        return f"{self.prefix}nm:{inst}"

    @property
    def nodes(self) -> str:
        return f"{self.prefix}nodes"

    def reap(self, inst: str) -> str:
        return f"{self.prefix}reap:{inst}"

    def conns(self, app_id: str) -> str:
        return f"{self.prefix}conns:{app_id}"

    @property
    def conn_apps(self) -> str:
        return f"{self.prefix}connapps"

    def usage(self, app_id: str, period: int) -> str:
        return f"{self.prefix}usage:{app_id}:{period}"


def membership(app_id: str, channel: str, peer_id: str) -> str:
    """A node's membership, as kept in its ``nm:<inst>`` set for the reaper."""
    return f"{app_id}{SEP}{channel}{SEP}{peer_id}"


def parse_membership(member: str) -> tuple[str, str, str]:
    app_id, channel, peer_id = member.split(SEP, 2)
    return app_id, channel, peer_id


def live_total(counts: dict[str, int], live: set[str], me: str) -> int:
    """Connections of an app on the other live nodes (a dead node's count is ignored until
    its entry is reaped)."""
    return sum(n for inst, n in counts.items() if inst != me and inst in live)
