"""The hub in a cluster, without Redis: a broker whose joins and routes complete when the
test says, so the ordering the hub promises around them is visible."""

from __future__ import annotations

import asyncio

from test_hub_counters import FakeLink

from roomwire.protocol import frames
from roomwire.server.broker import Broker, ClusterSink
from roomwire.server.hub import Hub


class HandBroker(Broker):
    """Clustered; every join and first socket waits for ``complete``."""

    clustered = True

    def __init__(self) -> None:
        self.pending: list[asyncio.Future[None]] = []
        self.calls: list[tuple[str, ...]] = []

    async def start(self, sink: ClusterSink) -> None:
        return None

    async def stop(self) -> None:
        return None

    def _future(self) -> asyncio.Future[None]:
        f: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append(f)
        return f

    def complete(self) -> None:
        for f in self.pending:
            if not f.done():
                f.set_result(None)
        self.pending.clear()

    def publish(self, app_id: str, channel: str, data: bytes, sender_json: bytes,
                sender_metadata: bytes | None) -> None:
        self.calls.append(("publish", channel))

    def direct(self, app_id: str, peer_id: str, data: bytes, sender_json: bytes,
               sender_metadata: bytes | None, local: int) -> int | None:
        self.calls.append(("direct", peer_id))
        return local if local else None

    def join(self, app_id: str, channel: str, peer_id: str, entry: bytes,
             ) -> asyncio.Future[None]:
        self.calls.append(("join", channel, peer_id))
        return self._future()

    def leave(self, app_id: str, channel: str, peer_id: str, last: bool) -> None:
        self.calls.append(("leave", channel, peer_id, str(last)))

    def peer_connected(self, app_id: str, peer_id: str, online: bool,
                       ) -> asyncio.Future[None] | None:
        self.calls.append(("online" if online else "offline", peer_id))
        return self._future() if online else None


async def test_subscribe_completes_after_the_join_and_only_then_hears_presence() -> None:
    broker = HandBroker()
    hub = Hub(lambda p: p, broker)
    a, b = FakeLink("a"), FakeLink("b")
    for link in (a, b):
        hub.attach(link)
    broker.complete()
    pending = hub.subscribe(a, "room", include_sender_metadata=False)
    assert isinstance(pending, asyncio.Future) and not pending.done()
    assert broker.calls[-1] == ("join", "room", "a")
    # The view reports a's own join (the broker's stream): nobody local to tell yet.
    hub.remote_presence("app", "room", "a", a.presence_entry, True)
    assert a.sent == []
    broker.complete()
    assert pending.done()
    snapshot = hub.finish_subscribe(a, "room")
    assert snapshot == frames.encode_presence(frames.encode_json("room"), [], [])
    # b joins: a (now a subscriber) hears it from the view, b waits for its own join.
    pending_b = hub.subscribe(b, "room", include_sender_metadata=False)
    assert isinstance(pending_b, asyncio.Future)
    hub.remote_presence("app", "room", "b", b.presence_entry, True)
    assert a.sent == [frames.encode_presence(frames.encode_json("room"),
                                             [b.presence_entry], [])]
    assert b.sent == []
    broker.complete()
    assert hub.finish_subscribe(b, "room") == frames.encode_presence(
        frames.encode_json("room"), [a.presence_entry], [])


async def test_a_second_socket_of_the_peer_waits_for_the_same_join() -> None:
    broker = HandBroker()
    hub = Hub(lambda p: p, broker)
    x1, x2 = FakeLink("x"), FakeLink("x")
    hub.attach(x1)
    hub.attach(x2)
    broker.complete()
    first = hub.subscribe(x1, "room", include_sender_metadata=False)
    second = hub.subscribe(x2, "room", include_sender_metadata=False)
    assert isinstance(first, asyncio.Future) and first is second
    assert [c for c in broker.calls if c[0] == "join"] == [("join", "room", "x")]
    hub.unsubscribe(x2, "room")  # gone before it completed: not the last holder
    hub.unsubscribe(x1, "room")
    assert [c for c in broker.calls if c[0] == "leave"] == [("leave", "room", "x", "True")]
    assert hub.tenants["app"].rooms == {}


async def test_no_direct_reaches_a_socket_before_its_welcome() -> None:
    broker = HandBroker()
    hub = Hub(lambda p: p, broker)
    sender, target = FakeLink("s"), FakeLink("t")
    hub.attach(sender)
    broker.complete()
    hub.welcomed(sender)
    ready = hub.attach(target)
    assert ready is not None and not ready.done()
    assert hub.direct("app", "t", b"1", sender.peer_json, None) is None
    assert target.sent == []
    broker.complete()
    hub.welcomed(target)
    assert hub.direct("app", "t", b"2", sender.peer_json, None) == 1
    assert target.sent == [frames.encode_direct(sender.peer_json, b"2", None)]
