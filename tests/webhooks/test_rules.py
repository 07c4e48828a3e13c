"""The pure webhook rules, table-tested: who wants which event, which targets are refused,
the grace that hides a reconnect, the retry and batch schedule."""

from __future__ import annotations

import pytest

from roomwire.server.webhooks.grace import Grace
from roomwire.server.webhooks.model import (
    DEFAULT_EVENT_TYPES,
    MESSAGE_PUBLISHED,
    PEER_CONNECTED,
    PEER_JOINED,
    Endpoint,
    Event,
    stream_key,
)
from roomwire.server.webhooks.policy import (
    address_allowed,
    events_problem,
    parse_networks,
    patterns_problem,
    url_problem,
    wants,
)
from roomwire.server.webhooks.schedule import Schedule

EP = Endpoint("wh_1", "app", "https://example.com/hook", channel_patterns=("rooms/*",))


@pytest.mark.parametrize("endpoint, event_type, channel, expected", [
    (EP, PEER_JOINED, "rooms/a", True),
    (EP, PEER_JOINED, "rooms/a/b", False),       # * stops at /
    (EP, PEER_JOINED, "lobby", False),
    (EP, PEER_CONNECTED, None, True),            # connection events have no channel
    (EP, MESSAGE_PUBLISHED, "rooms/a", False),   # opt-in only
    (Endpoint("w", "a", "https://x", events=frozenset({MESSAGE_PUBLISHED})),
     MESSAGE_PUBLISHED, "any", True),
    (Endpoint("w", "a", "https://x", enabled=False), PEER_JOINED, "any", False),
])
def test_wants(endpoint: Endpoint, event_type: str, channel: str | None,
               expected: bool) -> None:
    assert wants(endpoint, event_type, channel) is expected
    assert MESSAGE_PUBLISHED not in DEFAULT_EVENT_TYPES


LOOPBACK = parse_networks(["127.0.0.0/8"])


@pytest.mark.parametrize("address, allowed, expected", [
    ("93.184.216.34", (), True),
    ("127.0.0.1", (), False),
    ("127.0.0.1", LOOPBACK, True),
    ("10.0.0.5", (), False),
    ("10.0.0.5", LOOPBACK, False),
    ("192.168.1.1", (), False),
    ("172.16.0.1", (), False),
    ("169.254.169.254", (), False),   # cloud metadata
    ("::1", (), False),
    ("::ffff:127.0.0.1", (), False),  # v4-mapped loopback
    ("::ffff:127.0.0.1", LOOPBACK, True),
    ("fe80::1", (), False),
    ("fc00::1", (), False),
    ("0.0.0.0", (), False),
    ("224.0.0.1", (), False),
    ("2606:4700::1111", (), True),
    ("not-an-ip", (), False),
])
def test_address_allowed(address: str, allowed: tuple[object, ...], expected: bool) -> None:
    assert address_allowed(address, allowed) is expected  # type: ignore[arg-type]


@pytest.mark.parametrize("url, allowed, refused", [
    ("https://hooks.example.com/rw", (), False),
    ("http://hooks.example.com:8080/rw?x=1", (), False),
    ("ftp://example.com/", (), True),
    ("https://user:pw@example.com/", (), True),
    ("https:///nohost", (), True),
    ("https://example.com/#frag", (), True),
    ("https://127.0.0.1/hook", (), True),
    ("https://localhost:9000/hook", (), True),
    ("https://127.0.0.1:9000/hook", LOOPBACK, False),
    ("https://[::1]/hook", (), True),
    ("https://169.254.169.254/latest", (), True),
    ("https://example.com/" + "a" * 3000, (), True),
    ("https://exa mple.com/", (), True),
    ("https://example.com:99999/", (), True),
    (42, (), True),
])
def test_url_problem(url: object, allowed: tuple[object, ...], refused: bool) -> None:
    problem = url_problem(url, allowed)  # type: ignore[arg-type]
    assert (problem is not None) is refused, problem


def test_bad_network_named() -> None:
    with pytest.raises(ValueError, match="not-a-net"):
        parse_networks(["not-a-net"])


@pytest.mark.parametrize("events, ok", [
    (["peer_joined"], True), ([], False), (["nope"], False), ("peer_joined", False)])
def test_events_problem(events: object, ok: bool) -> None:
    assert (events_problem(events) is None) is ok


@pytest.mark.parametrize("patterns, ok", [
    (["**"], True), (["rooms/*"], True), ([], False), ([""], False), ("**", False)])
def test_patterns_problem(patterns: object, ok: bool) -> None:
    assert (patterns_problem(patterns) is None) is ok


def test_grace_cancel_and_release_order() -> None:
    g: Grace[str] = Grace(3.0)
    g.hold(("c", "alice"), "left-alice", now=10.0)
    g.hold("c", "vacated", now=10.0)
    g.hold(("c", "bob"), "left-bob", now=11.0)
    assert g.due(12.9) == []
    assert g.next_deadline() == 13.0
    assert g.cancel(("c", "bob")) is True       # bob came back: his left and join vanish
    assert g.cancel(("c", "bob")) is False
    assert g.last_deadline() == 13.0
    assert g.due(13.0) == ["left-alice", "vacated"]
    assert len(g) == 0 and g.next_deadline() is None and g.last_deadline() is None


def test_grace_keeps_first_hold_and_drains() -> None:
    g: Grace[str] = Grace(3.0)
    g.hold("k", "first", now=0.0)
    g.hold("k", "second", now=2.0)
    assert g.due(3.0) == ["first"]
    g.hold("a", "x", now=0.0)
    g.hold("b", "y", now=1.0)
    assert g.drain() == ["x", "y"] and len(g) == 0


@pytest.mark.parametrize("pending, age, expected", [
    (0, 0.0, None), (1, 0.0, 0.05), (1, 0.03, pytest.approx(0.02)), (1, 1.0, 0.0),
    (100, 0.0, 0.0), (150, 0.0, 0.0)])
def test_send_in(pending: int, age: float, expected: float | None) -> None:
    assert Schedule(batch_max=100, batch_delay=0.05).send_in(pending, age) == expected


@pytest.mark.parametrize("attempt, rand, expected", [
    (1, 1.0, 0.5), (2, 1.0, 1.0), (3, 1.0, 2.0), (8, 1.0, 60.0), (1000, 1.0, 60.0),
    (1, 0.0, 0.4), (3, 0.5, 1.8)])
def test_backoff(attempt: int, rand: float, expected: float) -> None:
    assert Schedule(initial=0.5, maximum=60.0, jitter=0.2).backoff(attempt, rand) == \
        pytest.approx(expected)


def test_gives_up_after_retry_for() -> None:
    s = Schedule(retry_for=100.0)
    assert not s.gives_up(0.0, 50.0, 49.0)
    assert s.gives_up(0.0, 50.0, 51.0)


def test_event_round_trip_and_streams() -> None:
    e = Event("evt_1", PEER_JOINED, 5, "app", "c", "alice", 3, {"metadata": {"n": 1}})
    assert Event.from_public(e.public()) == e
    assert stream_key("app", "c", "alice") != stream_key("app", None, "alice")
    assert stream_key("a", "b", None) != stream_key("a", None, "b")


@pytest.mark.parametrize("entry, message", [
    ({"url": "https://x.example/h", "secret": "short"}, "at least 16"),
    ({"url": "ftp://x.example/h", "secret": "s" * 20}, "http"),
    ({"url": "https://x.example/h", "secret": "s" * 20, "colour": 1}, "unknown setting"),
    ({"url": "https://x.example/h", "secret": "s" * 20, "events": ["nope"]}, "unknown event"),
])
def test_config_entries_refused_with_a_reason(entry: dict[str, object], message: str) -> None:
    from roomwire.server.config import ServerConfig

    with pytest.raises(ValueError, match=message) as info:
        ServerConfig(webhooks=[entry]).validate()
    assert "s" * 20 not in str(info.value)


def test_config_entry_ids_are_stable() -> None:
    from roomwire.server.webhooks.policy import endpoint_from_config

    entry = {"url": "https://x.example/h", "secret": "s" * 20}
    assert endpoint_from_config(entry, "app_1").id == endpoint_from_config(entry, "app_1").id
    assert endpoint_from_config(entry, "app_1").id != endpoint_from_config(entry, "app_2").id


def test_grace_drain_remaining_and_custom_hold() -> None:
    g: Grace[str] = Grace(3.0)
    g.hold("a", "x", now=0.0)
    g.hold("b", "y", now=2.0, seconds=0.5)
    assert g.next_deadline() == 2.5
    assert g.drain_remaining(2.2) == [("a", pytest.approx(0.8), "x"),
                                      ("b", pytest.approx(0.3), "y")]
    assert len(g) == 0
    g.hold("c", "z", now=10.0)
    assert g.drain_remaining(20.0) == [("c", 0.0, "z")]


def test_fact_json_round_trip() -> None:
    from roomwire.server.webhooks.model import PEER_LEFT, Fact, fact_from_json, fact_json

    f = Fact(PEER_LEFT, "app", "room", "alice", 123, {"metadata": {"a": [1]}, "members": 0})
    assert fact_from_json(fact_json(f)) == f
