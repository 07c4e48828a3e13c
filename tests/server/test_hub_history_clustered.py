"""The hub's side of history in a cluster, without Redis: a broker that records the history
scripts it is asked to run, so what each subscriber gets at the seam of a recovery, and on
which path, is visible frame by frame."""

from __future__ import annotations

import json
from typing import Any

from test_hub_counters import FakeLink

from roomwire.protocol.history import Position
from roomwire.server.broker import Broker, ClusterSink
from roomwire.server.broker.redis_history import ClusterHistory
from roomwire.server.broker.routing import Keys
from roomwire.server.broker.wire import parse_entry
from roomwire.server.history import Entry, HistoryRead, HistoryRule, RuleBook
from roomwire.server.hub import Hub

RULE = HistoryRule(None, "chat/**", 100, 60.0)
NOW = 1000.0


class ScriptBroker(Broker):
    """Clustered; joins complete at once; history scripts are recorded, not run."""

    clustered = True

    def __init__(self) -> None:
        self.inst = "n1.test"
        self.keys = Keys("t:")
        self.scripts: list[tuple[str, str, tuple[Any, ...]]] = []
        self.published: list[str] = []

    async def start(self, sink: ClusterSink) -> None:
        return None

    async def stop(self) -> None:
        return None

    def publish(self, app_id: str, channel: str, data: bytes, sender_json: bytes,
                sender_metadata: bytes | None) -> None:
        self.published.append(channel)

    def run_history(self, app_id: str, channel: str, script: str, args: tuple[Any, ...],
                    then: Any) -> None:
        self.scripts.append((script, channel, args))

    def direct(self, *args: Any) -> int:
        return 0

    def join(self, *args: Any) -> None:
        return None

    def leave(self, *args: Any) -> None:
        return None

    def peer_connected(self, *args: Any) -> None:
        return None


def _hub() -> tuple[Hub, ScriptBroker]:
    broker = ScriptBroker()
    hub = Hub(lambda payload: payload, broker)
    hub.cluster_history = ClusterHistory(broker, RuleBook([RULE]), epochs=lambda: "fresh")
    hub.clock = lambda: NOW
    return hub, broker


def _link(hub: Hub, peer: str, channel: str = "chat/a") -> FakeLink:
    link = FakeLink(peer, receives_presence=False)
    hub.attach(link)  # type: ignore[arg-type]
    assert hub.subscribe(link, channel, False) is None  # type: ignore[arg-type]
    return link


def _entry(offset: int) -> Entry:
    return Entry(offset, NOW - 1, str(offset).encode(), b'"p"', None, 130)


def _seen(link: FakeLink) -> list[tuple[Any, Any]]:
    """(data, offset) of the messages a link got; offset None for a frame without one."""
    out = []
    for raw in link.sent:
        f = json.loads(raw)
        assert f["type"] == "message", f
        out.append((f["data"], f.get("offset")))
    return out


async def test_the_seam_replay_then_buffered_newer_ones_and_no_late_duplicate() -> None:
    hub, broker = _hub()
    sub = _link(hub, "s")
    reading = hub.follow_recorded(sub, "chat/a", Position("e1", 1))  # type: ignore[arg-type]
    assert reading is not None and broker.scripts[-1][0] == "read"
    # While the read is out: 4 (also in the read) and 5 (newer) come from Redis.
    for offset in (4, 5):
        hub.deliver_posted("app", "chat/a", str(offset).encode(), b'"p"', None, offset, "e1",
                           -1)
    assert sub.sent == []  # held back until the replay went out
    read = HistoryRead("e1", 4, [_entry(2), _entry(3), _entry(4)], NOW - 1)
    _, position, recovered, out = hub.finish_recorded(
        sub, "chat/a", read, Position("e1", 1))  # type: ignore[arg-type]
    assert (position, recovered) == (Position("e1", 4), True)
    sub.sent.extend(out)
    # A message the read already had, still on its way from Redis: dropped; 6 goes through.
    for offset in (5, 6):
        hub.deliver_posted("app", "chat/a", str(offset).encode(), b'"p"', None, offset, "e1",
                           -1)
    assert _seen(sub) == [(2, 2), (3, 3), (4, 4), (5, 5), (6, 6)]


async def test_recovery_refused_still_sends_the_live_ones_after_the_read() -> None:
    hub, _ = _hub()
    sub = _link(hub, "s")
    hub.follow_recorded(sub, "chat/a", Position("old", 1))  # type: ignore[arg-type]
    hub.deliver_posted("app", "chat/a", b"8", b'"p"', None, 8, "e2", -1)
    read = HistoryRead("e2", 7, [], None)
    _, position, recovered, out = hub.finish_recorded(
        sub, "chat/a", read, Position("old", 1))  # type: ignore[arg-type]
    assert (position, recovered) == (Position("e2", 7), False)
    sub.sent.extend(out)
    assert _seen(sub) == [(8, 8)]


async def test_who_gets_a_local_publish_now_and_who_from_redis() -> None:
    """Subscribers that did not opt in get it at once (today's frame); the opted-in ones
    from Redis with the offset; the publisher (opted in) gets its own back from neither."""
    hub, broker = _hub()
    plain = _link(hub, "plain")
    opted = _link(hub, "opted")
    pub = _link(hub, "pub")
    for link in (opted, pub):
        hub.follow_recorded(link, "chat/a", None)  # type: ignore[arg-type]
        hub.finish_recorded(link, "chat/a", HistoryRead("e1", 0, [], None),  # type: ignore
                            None)
    hub.publish("app", "chat/a", b"1", b'"pub"', None, skip=pub)  # type: ignore[arg-type]
    assert _seen(plain) == [(1, None)] and opted.sent == [] and pub.sent == []
    assert broker.published == []  # the append script publishes instead
    script, channel, args = broker.scripts[-1]
    assert (script, channel) == ("append", "chat/a")
    header = args[0]  # "<size> <expiry ms> <epoch to start with> <renew> <reply>"
    assert header.split() == ["100", "61000", "fresh", "1", "1"]  # ttl + 1 s: Renewals
    assert parse_entry(args[3]) == (NOW, b"1", b'"pub"', None)  # the entry, as stored
    assert hub.last_position is not None  # the opted-in publisher's ack waits for Redis
    skip = next(iter(hub._skips))
    hub.deliver_posted("app", "chat/a", b"1", b'"pub"', None, 1, "e1", skip)
    assert _seen(plain) == [(1, None)]
    assert _seen(opted) == [(1, 1)]
    assert pub.sent == []


async def test_a_channel_without_a_rule_is_published_as_before() -> None:
    hub, broker = _hub()
    sub = _link(hub, "s", "lobby")
    hub.publish("app", "lobby", b"1", b'"p"', None)
    assert broker.published == ["lobby"] and broker.scripts == []
    assert _seen(sub) == [(1, None)]


async def test_turning_positions_off_keeps_the_socket_on_the_redis_path() -> None:
    hub, _ = _hub()
    sub = _link(hub, "s")
    other = _link(hub, "o")
    hub.follow_recorded(sub, "chat/a", None)  # type: ignore[arg-type]
    hub.finish_recorded(sub, "chat/a", HistoryRead("e1", 0, [], None), None)  # type: ignore
    # A publish of this node: the opted-in socket waits for it from Redis...
    hub.publish("app", "chat/a", b"1", b'"o"', None, skip=other)  # type: ignore[arg-type]
    assert sub.sent == []
    # ...and turns positions off before it arrives: it still gets it, plain, once.
    hub.unfollow_history(sub, "chat/a")  # type: ignore[arg-type]
    hub.deliver_posted("app", "chat/a", b"1", b'"o"', None, 1, "e1", 0)
    hub.publish("app", "chat/a", b"2", b'"o"', None, skip=other)  # type: ignore[arg-type]
    hub.deliver_posted("app", "chat/a", b"2", b'"o"', None, 2, "e1", 0)
    assert _seen(sub) == [(1, None), (2, None)]
