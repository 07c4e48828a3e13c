"""The hub reports what it fans out to the counters it was given, with no sockets."""

from __future__ import annotations

from roomwire.protocol import frames
from roomwire.server.broker.memory import MemoryBroker
from roomwire.server.hub import Hub
from roomwire.server.metrics import Metrics


class FakeLink:
    """A connection as the hub sees it; records what it was sent."""

    def __init__(self, peer_id: str, receives_presence: bool = True) -> None:
        self.app_id = "app"
        self.peer_id = peer_id
        self.peer_json = frames.encode_json(peer_id)
        self.peer_metadata: bytes | None = None
        self.presence_entry = frames.presence_entry(self.peer_json, None)
        self.receives_presence = receives_presence
        self.sent: list[bytes] = []

    def send(self, payload: bytes) -> None:
        self.sent.append(payload)

    def send_wire(self, wire: bytes) -> None:
        self.sent.append(wire)

    def close(self, code: int, reason: str) -> None:
        raise AssertionError(f"nobody should be closed here ({code} {reason})")


def _hub() -> tuple[Hub, Metrics, FakeLink, FakeLink]:
    metrics = Metrics()
    hub = Hub(lambda payload: payload, MemoryBroker(), metrics)
    a, b = FakeLink("a"), FakeLink("b")
    for link in (a, b):
        hub.attach(link)
        hub.subscribe(link, "room", include_sender_metadata=False)
    return hub, metrics, a, b


def test_presence_messages_and_directs_are_counted_per_recipient() -> None:
    hub, metrics, a, b = _hub()
    # Only b's joined went out, to a (a newcomer hears the others in its snapshot instead).
    assert metrics.frames_sent["presence"] == 1, metrics.frames_sent
    sent_before = len(b.sent)
    assert hub.publish("app", "room", b'"hi"', a.peer_json, None, skip=a) == 1
    assert len(b.sent) == sent_before + 1
    assert metrics.frames_sent["message"] == 1
    assert hub.direct("app", "b", b'"psst"', a.peer_json, None) == 1
    assert metrics.frames_sent["direct"] == 1
    # A publish that came from another node counts like a local one.
    assert hub.deliver_publish("app", "room", b'"x"', b'"c"', None) == 2
    assert metrics.frames_sent["message"] == 3


def test_one_publish_in_sixteen_is_timed() -> None:
    hub, metrics, a, _b = _hub()
    for _ in range(32):
        hub.publish("app", "room", b"1", a.peer_json, None, skip=a)
    assert metrics.fanout_count == 2, metrics.fanout_count
    assert sum(metrics.fanout_buckets) == 2
    assert metrics.fanout_sum > 0.0
    assert "roomwire_fanout_seconds_count 2" in metrics.render({})


def test_a_hub_without_counters_still_delivers() -> None:
    hub = Hub(lambda payload: payload, MemoryBroker())
    a, b = FakeLink("a"), FakeLink("b")
    for link in (a, b):
        hub.attach(link)
        hub.subscribe(link, "room", include_sender_metadata=False)
    before = len(b.sent)
    assert hub.publish("app", "room", b"1", a.peer_json, None, skip=a) == 1
    assert len(b.sent) == before + 1
